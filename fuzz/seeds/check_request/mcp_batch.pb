
á
0".spiffe://cluster.local/ns/agents/sa/summarizer"¬©POST4
x-request-id$00000000-0000-0000-0000-000000000000"
x-envoy-auth-partial-bodyfalse

:authoritytools.example.com
:schemehttp
:path/mcp 
content-typeapplication/json
:methodPOST"/mcp*tools.example.com2httpH¦RHTTP/1.1b¦[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/workspace/../etc"}}}]