module hallpass.test/upstreams/go

go 1.19
