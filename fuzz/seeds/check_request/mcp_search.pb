
½"º·POST 
content-typeapplication/json

:authoritytools.example.com4
x-request-id$00000000-0000-0000-0000-000000000000

x-agent-idresearch-bot
:schemehttp
:path/mcp
:methodPOST"
x-envoy-auth-partial-bodyfalse"/mcp*tools.example.com2httpH˜RHTTP/1.1b˜{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search_docs","arguments":{"query":"refund policy for enterprise customers","limit":10}}}