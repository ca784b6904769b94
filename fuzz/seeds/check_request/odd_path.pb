
í"êçget
:schemehttp

x_agent_id
triage-bot
:methodget!
x-envoy-auth-partial-bodytrue4
x-request-id$00000000-0000-0000-0000-000000000000

:authorityMAIL.example.com.C
:path://v1/users/alice/./messages/%2e%2e/m1;jsessionid=1?a=1&a=2"://v1/users/alice/./messages/%2e%2e/m1;jsessionid=1?a=1&a=2*MAIL.example.com.2httpHRHTTP/1.1bï»¿{}