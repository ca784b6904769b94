
¦"Á¾PATCH4
x-request-id$00000000-0000-0000-0000-000000000000@
content-type0application/x-www-form-urlencoded; charset=utf-8"

:authoritycrm.example.com:8443 
x-http-method-overrideDELETE1
:path(/api/contacts/42?fields=name&_method=PUT"
x-envoy-auth-partial-bodyfalse
:methodPATCH
:schemehttp"(/api/contacts/42?fields=name&_method=PUT*crm.example.com:84432httpH+RHTTP/1.1b+status=won&notes=a+b%20c&discount_percent=5Z`
^
envoy.filters.http.jwt_authn>
<
agents2*0

act*

subalice

sub
triage-bot