
ù"öóGET"/v1/users/alice/messages/m1*mail.example.com2httpRHTTP/1.1j–

x-on-behalf-ofalice


x-agent-id
triage-bot

:methodGET


:authoritymail.example.com
$
:path/v1/users/alice/messages/m1

:schemehttp
4
x-request-id$00000000-0000-0000-0000-000000000000