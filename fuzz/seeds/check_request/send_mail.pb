
ž"›˜POST4
x-request-id$00000000-0000-0000-0000-000000000000

:authoritymail.example.com

x-agent-id
triage-bot"
x-envoy-auth-partial-bodyfalse
:methodPOST&
:path/v1/users/alice/messages/send
:schemehttp 
content-typeapplication/json
x-on-behalf-ofalice"/v1/users/alice/messages/send*mail.example.com2httpH4RHTTP/1.1b4{"to":["bob@example.com"],"subject":"hi","body":"x"}