// Upstream for the hallpass upstream-reading suite (tests/upstreams/run_suite.py): a Go
// server on the standard library only, decoding bodies into structs with encoding/json (so
// keys bind case-insensitively, under Unicode simple folding: "paramſ" is "params", "Email"
// is "email"), and - like many Go handlers - ignoring the request's content type.
//
//	RECORD_FILE=... go-upstream PORT   (or env PORT)
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
)

var (
	recordMu   sync.Mutex
	recordFile string
)

func record(r *http.Request, effect any) {
	line, _ := json.Marshal(map[string]any{
		"case":     r.Header.Get("X-Case"),
		"upstream": "go",
		"method":   r.Method,
		"path":     r.URL.Path,
		"effect":   effect,
	})
	recordMu.Lock()
	defer recordMu.Unlock()
	f, err := os.OpenFile(recordFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "record:", err)
		return
	}
	defer f.Close()
	_, _ = f.Write(append(line, '\n'))
}

// A JSON-RPC (MCP) tools/call, bound the encoding/json way.
type rpcCall struct {
	JSONRPC string `json:"jsonrpc"`
	ID      any    `json:"id"`
	Method  string `json:"method"`
	Params  struct {
		Name      string         `json:"name"`
		Arguments map[string]any `json:"arguments"`
	} `json:"params"`
}

func rpc(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "method", http.StatusMethodNotAllowed)
		return
	}
	// The content type is not looked at: the body is JSON-RPC by contract.
	var call rpcCall
	if err := json.NewDecoder(r.Body).Decode(&call); err != nil {
		http.Error(w, "bad json: "+err.Error(), http.StatusBadRequest)
		return
	}
	if call.Method != "tools/call" {
		http.Error(w, "unknown method", http.StatusBadRequest)
		return
	}
	record(r, map[string]any{"tool": call.Params.Name, "arguments": call.Params.Arguments})
	w.Header().Set("content-type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": call.ID, "result": map[string]any{"ran": call.Params.Name}})
}

type contactPatch struct {
	Status *string `json:"status"`
	Notes  *string `json:"notes"`
	Email  *string `json:"email"`
	Owner  *string `json:"owner"`
}

func contacts(w http.ResponseWriter, r *http.Request) {
	id := strings.TrimPrefix(r.URL.Path, "/api/contacts/")
	if r.Method != http.MethodPatch || id == "" || strings.Contains(id, "/") {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	var p contactPatch
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
		http.Error(w, "bad json: "+err.Error(), http.StatusBadRequest)
		return
	}
	changed := map[string]string{}
	for name, v := range map[string]*string{"status": p.Status, "notes": p.Notes, "email": p.Email, "owner": p.Owner} {
		if v != nil {
			changed[name] = *v
		}
	}
	record(r, map[string]any{"contact": id, "changed": changed})
	w.Header().Set("content-type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"id": id, "changed": changed})
}

func main() {
	port := os.Getenv("PORT")
	if len(os.Args) > 1 {
		port = os.Args[1]
	}
	recordFile = os.Getenv("RECORD_FILE")
	if port == "" || recordFile == "" {
		fmt.Fprintln(os.Stderr, "usage: RECORD_FILE=... go-upstream PORT")
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/mcp", rpc)
	mux.HandleFunc("/rpc", rpc)
	mux.HandleFunc("/api/contacts/", contacts)
	fmt.Println("go upstream on", port)
	if err := http.ListenAndServe("127.0.0.1:"+port, mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
