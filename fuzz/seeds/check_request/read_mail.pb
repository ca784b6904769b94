
š"—”GET
x-on-behalf-ofalice
:schemehttp$
:path/v1/users/alice/messages/m14
x-request-id$00000000-0000-0000-0000-000000000000
:methodGET

x-agent-id
triage-bot

:authoritymail.example.com"/v1/users/alice/messages/m1*mail.example.com2httpRHTTP/1.1