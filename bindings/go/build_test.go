package pj

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Building the package in a checkout where `cargo build --release` has not run (include/pj.h is
// committed, target/release/libpj.so is not there) fails with a message that says what to do,
// instead of the linker's "cannot find -lpj"; so does a checkout without the header. The test
// builds a copy of this package in a scratch tree laid out like the repository.
func TestBuildWithoutTheLibraryNamesTheFix(t *testing.T) {
	goCmd := goTool(t)
	for _, tc := range []struct {
		name   string
		header bool
		want   string
	}{
		{"library missing", true, "target/release/libpj.so is missing: run `cargo build --release`"},
		{"header missing", false, "include/pj.h is missing: run `cargo build --release`"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			pkg := filepath.Join(root, "bindings", "go")
			for _, dir := range []string{pkg, filepath.Join(root, "include"), filepath.Join(root, "target", "release")} {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if tc.header {
				copyFile(t, filepath.Join("..", "..", "include", "pj.h"), filepath.Join(root, "include", "pj.h"))
			}
			entries, err := os.ReadDir(".")
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				name := e.Name()
				if !e.IsDir() && !strings.HasSuffix(name, "_test.go") &&
					(strings.HasSuffix(name, ".go") || strings.HasSuffix(name, ".c") ||
						strings.HasSuffix(name, ".h") || name == "go.mod") {
					copyFile(t, name, filepath.Join(pkg, name))
				}
			}
			// A program of another module that uses the package through a replace directive, as
			// the README says.
			app := filepath.Join(root, "app")
			if err := os.MkdirAll(app, 0o755); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(app, "go.mod"), "module example.com/app\n\ngo 1.23\n\n"+
				"require github.com/pj-parallel/pj/bindings/go v0.0.0\n\n"+
				"replace github.com/pj-parallel/pj/bindings/go => ../bindings/go\n")
			writeFile(t, filepath.Join(app, "main.go"), "package main\n\n"+
				"import pj \"github.com/pj-parallel/pj/bindings/go\"\n\n"+
				"func main() { println(pj.Version()) }\n")
			cmd := exec.Command(goCmd, "build", "-o", filepath.Join(root, "app.bin"), ".")
			cmd.Dir = app
			cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local", "GOFLAGS=")
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("go build succeeded without %s", tc.name)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("go build failed without saying %q:\n%s", tc.want, out)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, string(data))
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}
