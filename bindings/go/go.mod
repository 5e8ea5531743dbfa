module pj

go 1.23
