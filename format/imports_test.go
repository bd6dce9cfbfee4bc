package format_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportRules pins the layers of the module: format (and every
// package under it) imports nothing above it; inspect and convert import
// only format; limits imports inspect but no format package (its caller
// passes numbers in); only cmd/diskimg uses the command-line libraries.
func TestImportRules(t *testing.T) {
	const mod = "github.com/diskimg/diskimg"
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}|{{join .Imports \" \"}}|{{join .Deps \" \"}}", mod+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	// May import, besides the standard library and third-party modules.
	allowed := map[string][]string{
		"format":  {"format"},
		"inspect": {"format"},
		"convert": {"format"},
		"limits":  {"inspect"},
		"bench":   {"format", "convert"},
		"cmd":     {"format", "inspect", "convert", "limits", "bench"},
	}
	cliOnly := []string{"github.com/urfave/cli", "github.com/schollz/progressbar"}
	layer := func(pkg string) string { return strings.Split(strings.TrimPrefix(pkg, mod+"/"), "/")[0] }
	seen := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		parts := strings.Split(line, "|")
		pkg, imports, deps := parts[0], strings.Fields(parts[1]), strings.Fields(parts[2])
		from := layer(pkg)
		rules, ok := allowed[from]
		if !ok {
			t.Errorf("%s: top-level directory %q has no import rule", pkg, from)
			continue
		}
		seen++
		for _, imp := range imports {
			if !strings.HasPrefix(imp, mod+"/") {
				continue
			}
			if to := layer(imp); to != from && !contains(rules, to) {
				t.Errorf("%s imports %s: %s may import only %v", pkg, imp, from, rules)
			}
		}
		if from == "cmd" {
			continue
		}
		for _, d := range deps {
			for _, c := range cliOnly {
				if strings.HasPrefix(d, c) {
					t.Errorf("%s depends on %s, which only cmd/diskimg may use", pkg, d)
				}
			}
		}
	}
	if seen < 10 {
		t.Fatalf("go list found only %d packages", seen)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
