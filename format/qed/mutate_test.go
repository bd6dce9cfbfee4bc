package qed_test

import (
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

// TestMutatedSeeds runs formattest.Exercise on seeds with random bytes
// changed, mostly in the header: a deterministic complement to
// FuzzQed that needs no fuzzing time.
func TestMutatedSeeds(t *testing.T) {
	dir := "../../testdata/qed"
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) == 0 {
		t.Fatalf("no seeds in %s: %v", dir, err)
	}
	rng := rand.New(rand.NewSource(1))
	for i := 0; i < 500; i++ {
		d, err := os.ReadFile(filepath.Join(dir, ents[rng.Intn(len(ents))].Name()))
		if err != nil {
			t.Fatal(err)
		}
		for k := 0; k < 1+rng.Intn(4); k++ {
			p := rng.Intn(min(len(d), 512))
			if rng.Intn(3) == 0 {
				p = rng.Intn(len(d))
			}
			d[p] = byte(rng.Intn(256))
		}
		formattest.Exercise(t, d, "qed")
	}
}
