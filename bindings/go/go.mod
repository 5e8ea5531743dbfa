module github.com/pj-parallel/pj/bindings/go

go 1.23
