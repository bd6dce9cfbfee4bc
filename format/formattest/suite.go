package formattest

import (
	"fmt"
	"slices"
	"testing"
)

// Variant is one way of making an image: qemu-img convert or create
// options, such as {"-o", "cluster_size=512"} or {"-c"}.
type Variant struct {
	Name string
	Args []string
}

// Pick returns the variants of vs with the given names, in their order.
func Pick(vs []Variant, names ...string) []Variant {
	var out []Variant
	for _, n := range names {
		i := slices.IndexFunc(vs, func(v Variant) bool { return v.Name == n })
		if i < 0 {
			panic("formattest.Pick: no variant " + n)
		}
		out = append(out, vs[i])
	}
	return out
}

// Sizes are virtual sizes every variant is tried at: a tiny one, one that
// is not a multiple of any cluster, and one of several blocks.
var Sizes = []int64{1 << 20, 9<<20 + 3*512, 33<<20 + 4096}

// Contents are the data patterns every variant is tried with.
var Contents = []Content{Empty, Sparse, Dense, Zeros}

// Run makes an image for every variant × size × content with qemu-img
// (format fmt) and checks diskimg against qemu-img on each, in parallel.
// Sizes are rounded as the format needs by qemu-img itself; diskimg must
// agree. With -short each variant gets one size (the odd one) and one
// content (sparse).
func Run(t *testing.T, fmtName string, variants []Variant, o Options) {
	RequireQemu(t)
	sizes, contents := Sizes, Contents
	if testing.Short() {
		sizes, contents = Sizes[1:2], []Content{Sparse}
	}
	for _, v := range variants {
		for _, size := range sizes {
			for _, c := range contents {
				name := fmt.Sprintf("%s/%d/%s", v.Name, size, c)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					dir := t.TempDir()
					path := Generate(t, dir, "img", fmtName, size, c, v.Args...)
					Check(t, path, o)
				})
			}
		}
	}
}

// RunEmptyHuge creates an empty image of the given size (qemu-img create
// syntax, such as "2T") for every variant and checks info against
// qemu-img, and that diskimg's map holds no data and reads zeros. (The
// image is known to be empty, so qemu-img map, which walks some formats
// cluster by cluster for minutes, is not needed.)
func RunEmptyHuge(t *testing.T, fmtName, size string, variants []Variant, o Options) {
	RequireQemu(t)
	for _, v := range variants {
		t.Run("empty-"+size+"/"+v.Name, func(t *testing.T) {
			t.Parallel()
			path := t.TempDir() + "/img." + fmtName
			Create(t, path, fmtName, size, createArgs(v.Args)...)
			CheckEmpty(t, path, o)
		})
	}
}

// createArgs keeps the -o options of a convert variant; -c has no meaning
// for create.
func createArgs(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == "-o" && i+1 < len(args) {
			out = append(out, args[i], args[i+1])
			i++
		}
	}
	return out
}
