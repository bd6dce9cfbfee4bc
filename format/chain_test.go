package format_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// layerFile is a test format for the chain: a text file of lines
//
//	TSTL size N
//	backing NAME [NAME...]   (optional; names tried in order)
//	format FMT               (optional)
//	verify fail|onread       (optional: Verify fails, at open or on reads)
//	id ID                    (optional: the parent must be the layer that says "self ID")
//	self ID
//	data START LENGTH BYTE   (a run of one repeated byte)
//	zero START LENGTH
//
// Everything else is Unallocated.
type layerFile struct {
	format.Base
	ref  *format.Backing
	runs []layerRun
	self string // the layer's identity ("self ID")
}

type layerRun struct {
	start, end int64
	status     format.Status
	b          byte
}

const layerMagic = "TSTL"

func init() {
	format.Register(&format.Format{
		Name:     "testlayer",
		Priority: 1, // before raw, which takes any file
		Probe: func(f format.File) bool {
			var b [4]byte
			n, _ := f.ReadAt(b[:], 0)
			return n == 4 && string(b[:]) == layerMagic
		},
		Open: func(f format.File, _ *format.Opener) (format.Image, error) { return openLayer(f) },
	})
}

// layerOpens counts the test layers opened; past maxLayerOpens opening
// fails, so a chain that opened candidates without bound fails fast.
var layerOpens atomic.Int64

const maxLayerOpens = 100000

func openLayer(f format.File) (*layerFile, error) {
	if layerOpens.Add(1) > maxLayerOpens {
		return nil, fmt.Errorf("more than %d test layers opened", maxLayerOpens)
	}
	data := make([]byte, f.Size())
	if _, err := f.ReadAt(data, 0); err != nil {
		return nil, err
	}
	l := &layerFile{Base: format.Base{File: f, Meta: format.Info{Format: "testlayer"}}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		w := strings.Fields(sc.Text())
		var s, n int64
		var b byte
		switch w[0] {
		case layerMagic:
			fmt.Sscan(w[2], &l.Meta.VirtualSize)
		case "backing":
			l.ref = &format.Backing{Names: w[1:]}
		case "format":
			l.ref.Format = w[1]
		case "verify":
			l.ref.VerifyOnRead = w[1] == "onread"
			l.ref.Verify = func(name string, parent format.Image) error {
				if _, ok := parent.(*layerFile); !ok {
					return fmt.Errorf("parent %s is a %T", name, parent)
				}
				return fmt.Errorf("parent %s: wrong identity", name)
			}
		case "id":
			// The parent must be the layer whose own "self" line is
			// this id; with no backing line the id is the only name.
			if l.ref == nil {
				l.ref = &format.Backing{}
			}
			want := w[1]
			l.ref.ID = want
			l.ref.Verify = func(name string, parent format.Image) error {
				if p, ok := parent.(*layerFile); !ok || p.self != want {
					return fmt.Errorf("parent %s is not %s", name, want)
				}
				return nil
			}
		case "self":
			l.self = w[1]
		case "data":
			fmt.Sscan(strings.Join(w[1:], " "), &s, &n, &b)
			l.runs = append(l.runs, layerRun{s, s + n, format.Data, b})
		case "zero":
			fmt.Sscan(strings.Join(w[1:], " "), &s, &n)
			l.runs = append(l.runs, layerRun{s, s + n, format.Zero, 0})
		}
	}
	return l, nil
}

func (l *layerFile) Backing() *format.Backing { return l.ref }

func (l *layerFile) Extent(off int64) (format.Extent, error) { return l.ExtentTo(off, l.Size()) }

func (l *layerFile) ExtentTo(off, limit int64) (format.Extent, error) {
	end := limit
	for _, r := range l.runs {
		if off >= r.start && off < r.end {
			return format.Extent{Start: off, Length: min(r.end, limit) - off, Status: r.status, Offset: -1}, nil
		}
		if r.start > off {
			end = min(end, r.start)
		}
	}
	return format.Extent{Start: off, Length: end - off, Status: format.Unallocated, Offset: -1}, nil
}

func (l *layerFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := format.ClipRead(p, off, l.Size())
	for i := range p[:n] {
		p[i] = 0
		for _, r := range l.runs {
			if pos := off + int64(i); pos >= r.start && pos < r.end {
				p[i] = r.b
			}
		}
	}
	return n, err
}

func writeLayer(t *testing.T, path string, lines ...string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	formattest.WriteFile(t, path, []byte(strings.Join(lines, "\n")+"\n"))
}

type span struct {
	start, length int64
	status        format.Status
	depth         int
}

func extents(t *testing.T, img format.Image) []span {
	t.Helper()
	var out []span
	err := format.Walk(img, 0, func(e format.Extent) error {
		out = append(out, span{e.Start, e.Length, e.Status, e.Depth})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestChain walks a chain of three layers of different sizes: each layer
// answers for itself, the chain forwards what it does not store, with the
// depth of the layer that answers, and zeros past a shorter backing file
// stay at depth 0, as qemu-img map shows them.
func TestChain(t *testing.T) {
	dir := t.TempDir()
	writeLayer(t, filepath.Join(dir, "base"), "TSTL size 4096", "data 0 1024 97")
	writeLayer(t, filepath.Join(dir, "mid"), "TSTL size 8192", "backing base", "format testlayer", "data 512 512 98", "zero 2048 512")
	writeLayer(t, filepath.Join(dir, "top"), "TSTL size 12288", "backing mid", "data 0 256 99")
	img := formattest.Open(t, filepath.Join(dir, "top"), "")
	want := []span{
		{0, 256, format.Data, 0},
		{256, 256, format.Data, 2},
		{512, 512, format.Data, 1},
		{1024, 1024, format.Unallocated, 2},
		{2048, 512, format.Zero, 1},
		{2560, 1536, format.Unallocated, 2},
		{4096, 4096, format.Unallocated, 1},
		{8192, 4096, format.Unallocated, 0},
	}
	if got := extents(t, img); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("extents\n got %v\nwant %v", got, want)
	}
	buf := make([]byte, img.Size())
	if n, err := img.ReadAt(buf, 0); n != len(buf) || err != nil {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	wantBytes := make([]byte, len(buf))
	for i := range wantBytes {
		switch {
		case i < 256:
			wantBytes[i] = 'c'
		case i >= 512 && i < 1024:
			wantBytes[i] = 'b'
		case i < 1024:
			wantBytes[i] = 'a'
		}
	}
	if !bytes.Equal(buf, wantBytes) {
		t.Error("chain reads the wrong bytes")
	}
	info := img.Info()
	if info.BackingFile != "mid" || info.FullBackingFile != filepath.Join(dir, "mid") || info.Backing == nil ||
		info.Backing.Info().BackingFormat != "testlayer" || info.Backing.Info().Backing == nil {
		t.Errorf("info %+v", info)
	}
	if _, ok := format.TopLayer(img).(*layerFile); !ok {
		t.Errorf("TopLayer is a %T", format.TopLayer(img))
	}
}

// TestChainPolicy: the policy is applied once, in the chain, to every
// layer's reference.
func TestChainPolicy(t *testing.T) {
	dir := t.TempDir()
	writeLayer(t, filepath.Join(dir, "out"), "TSTL size 512", "data 0 512 1")
	writeLayer(t, filepath.Join(dir, "in", "top"), "TSTL size 1024", "backing ../out", "data 512 512 2")
	top := filepath.Join(dir, "in", "top")
	if _, err := format.Open(top, "", format.Policy{}); !errors.Is(err, format.ErrOutsideDirectory) {
		t.Errorf("default policy: %v, want ErrOutsideDirectory", err)
	}
	if _, err := format.Open(top, "", format.Policy{Untrusted: true}); !errors.Is(err, format.ErrOutsideDirectory) {
		t.Errorf("untrusted: %v, want ErrOutsideDirectory", err)
	}
	img, err := format.Open(top, "", format.Policy{AllowOutside: true})
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
	// NoBacking: the names are shown, nothing is opened, the range the
	// image does not store reads as zeros.
	img = formattest.OpenPolicy(t, top, "", format.Policy{NoBacking: true})
	info := img.Info()
	if info.Backing != nil || info.BackingFile != "../out" || info.FullBackingFile != filepath.Join(dir, "out") {
		t.Errorf("NoBacking info %+v", info)
	}
	if got := extents(t, img); fmt.Sprint(got) != fmt.Sprint([]span{{0, 512, format.Unallocated, 0}, {512, 512, format.Data, 0}}) {
		t.Errorf("NoBacking extents %v", got)
	}
	buf := make([]byte, 512)
	if _, err := img.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, make([]byte, 512)) {
		t.Errorf("NoBacking read: %v, %v", buf[:4], err)
	}
}

func TestChainLoopAndDepth(t *testing.T) {
	dir := t.TempDir()
	writeLayer(t, filepath.Join(dir, "a"), "TSTL size 512", "backing b")
	writeLayer(t, filepath.Join(dir, "b"), "TSTL size 512", "backing a")
	if _, err := format.Open(filepath.Join(dir, "a"), "", format.Policy{}); err == nil || !strings.Contains(err.Error(), "loops") {
		t.Errorf("loop: %v", err)
	}
	writeLayer(t, filepath.Join(dir, "l0"), "TSTL size 512")
	for i := 1; i <= format.MaxChainDepth+1; i++ {
		writeLayer(t, filepath.Join(dir, fmt.Sprintf("l%d", i)), "TSTL size 512", fmt.Sprintf("backing l%d", i-1))
	}
	if _, err := format.Open(filepath.Join(dir, fmt.Sprintf("l%d", format.MaxChainDepth+1)), "", format.Policy{}); err == nil || !strings.Contains(err.Error(), "deeper") {
		t.Errorf("deep chain: %v", err)
	}
	img := formattest.Open(t, filepath.Join(dir, fmt.Sprintf("l%d", format.MaxChainDepth-1)), "")
	if e, err := img.Extent(0); err != nil || e.Depth != format.MaxChainDepth-1 {
		t.Errorf("extent of a chain of %d: %+v, %v", format.MaxChainDepth, e, err)
	}
}

// TestChainNames: of several names the first that opens is the parent;
// Verify decides whether it is the right one, at open or on reads.
func TestChainNames(t *testing.T) {
	dir := t.TempDir()
	writeLayer(t, filepath.Join(dir, "p"), "TSTL size 512", "data 0 512 7")
	top := filepath.Join(dir, "top")
	writeLayer(t, top, "TSTL size 512", "backing missing p")
	img, err := format.Open(top, "", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	if info := img.Info(); info.BackingFile != "p" || info.Backing == nil {
		t.Errorf("info %+v", info)
	}
	img.Close()
	writeLayer(t, top, "TSTL size 512", "backing missing gone")
	if _, err := format.Open(top, "", format.Policy{}); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("no name opens: %v, want the first name's error", err)
	}
	writeLayer(t, top, "TSTL size 512", "backing p", "verify fail")
	if _, err := format.Open(top, "", format.Policy{}); err == nil || !strings.Contains(err.Error(), "wrong identity") {
		t.Errorf("verify: %v", err)
	}
	writeLayer(t, top, "TSTL size 512", "backing p", "verify onread")
	img, err = format.Open(top, "", format.Policy{})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if e, err := img.Extent(0); err != nil || e.Status != format.Data || e.Depth != 1 {
		t.Errorf("verify on read: extent %+v, %v", e, err)
	}
	if _, err := img.ReadAt(make([]byte, 512), 0); err == nil || !strings.Contains(err.Error(), "wrong identity") {
		t.Errorf("verify on read: read %v", err)
	}
}

// TestChainGivenParents: a layer that names its parent by identity alone
// takes it from Policy.Parents, the one whose identity it verifies;
// without one the error names the identity and how to give the parent.
func TestChainGivenParents(t *testing.T) {
	dir := t.TempDir()
	other := filepath.Join(t.TempDir(), "elsewhere")
	writeLayer(t, filepath.Join(other, "wrong"), "TSTL size 512", "self B", "data 0 512 1")
	writeLayer(t, filepath.Join(other, "right"), "TSTL size 512", "self A", "data 0 256 2")
	top := filepath.Join(dir, "top")
	writeLayer(t, top, "TSTL size 1024", "id A", "data 512 512 3")
	if _, err := format.Open(top, "", format.Policy{}); err == nil || !strings.Contains(err.Error(), "only by A") || !strings.Contains(err.Error(), "--parent") {
		t.Errorf("no parent given: %v", err)
	}
	wrong, right := filepath.Join(other, "wrong"), filepath.Join(other, "right")
	if _, err := format.Open(top, "", format.Policy{Parents: []string{wrong}}); err == nil || !strings.Contains(err.Error(), "is not A") {
		t.Errorf("wrong parent: %v", err)
	}
	// Given parents are opened where they are, whatever the directory rule.
	img := formattest.OpenPolicy(t, top, "", format.Policy{Parents: []string{wrong, right}})
	if info := img.Info(); info.BackingFile != right || info.FullBackingFile != right || info.Backing == nil {
		t.Errorf("info %+v", info)
	}
	if got := extents(t, img); fmt.Sprint(got) != fmt.Sprint([]span{{0, 256, format.Data, 1}, {256, 256, format.Unallocated, 1}, {512, 512, format.Data, 0}}) {
		t.Errorf("extents %v", got)
	}
	if _, err := format.Open(top, "", format.Policy{Parents: []string{right}, Untrusted: true}); !errors.Is(err, format.ErrOutsideDirectory) {
		t.Errorf("untrusted with a given parent: %v", err)
	}
	// A layer with stored names tries them first, then the given parents.
	writeLayer(t, top, "TSTL size 1024", "backing gone", "id A")
	if _, err := format.Open(top, "", format.Policy{}); err == nil || !strings.Contains(err.Error(), "gone") || !strings.Contains(err.Error(), "--parent") {
		t.Errorf("stored name missing: %v", err)
	}
	img2, err := format.Open(top, "", format.Policy{Parents: []string{right}})
	if err != nil {
		t.Fatal(err)
	}
	img2.Close()
	// A layer without an ID never takes a given parent.
	writeLayer(t, top, "TSTL size 1024", "backing gone")
	if _, err := format.Open(top, "", format.Policy{Parents: []string{right}}); err == nil {
		t.Error("a given parent replaced a backing file that names no identity")
	}
}

// TestChainDeferredErrors: under DeferBackingErrors an image whose
// backing file is missing, outside the directory or a loop opens with its
// names, and only what needs the backing file fails.
func TestChainDeferredErrors(t *testing.T) {
	dir := t.TempDir()
	writeLayer(t, filepath.Join(dir, "self"), "TSTL size 512", "backing self")
	for _, c := range []struct{ backing, want string }{
		{"gone", "no such file"},
		{"/abs/base", "absolute path"},
		{"../up", "\"..\""},
		{`C:\images\base.vhdx`, "absolute Windows path"},
		{"self", "loops"},
	} {
		top := filepath.Join(dir, "top")
		if c.backing == "self" {
			top = filepath.Join(dir, "self")
		} else {
			writeLayer(t, top, "TSTL size 1024", "backing "+c.backing, "data 512 512 3")
		}
		if _, err := format.Open(top, "", format.Policy{}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: strict open: %v, want %q", c.backing, err, c.want)
		}
		img, err := format.Open(top, "", format.Policy{DeferBackingErrors: true})
		if err != nil {
			t.Fatalf("%s: deferred open: %v", c.backing, err)
		}
		info := img.Info()
		if info.BackingFile != c.backing || info.Backing != nil {
			t.Errorf("%s: info %+v", c.backing, info)
		}
		berr := format.BackingError(img)
		if berr == nil || !strings.Contains(berr.Error(), c.want) {
			t.Errorf("%s: BackingError %v", c.backing, berr)
		}
		if _, err := img.Extent(0); err == nil || err.Error() != berr.Error() {
			t.Errorf("%s: Extent(0) = %v, want the backing error", c.backing, err)
		}
		if _, err := img.ReadAt(make([]byte, 512), 0); err == nil || err.Error() != berr.Error() {
			t.Errorf("%s: ReadAt(0) = %v, want the backing error", c.backing, err)
		}
		if c.backing != "self" {
			// What the image holds itself still reads.
			if e, err := img.Extent(512); err != nil || e.Status != format.Data {
				t.Errorf("%s: Extent(512) = %+v, %v", c.backing, e, err)
			}
			buf := make([]byte, 512)
			if _, err := img.ReadAt(buf, 512); err != nil || buf[0] != 3 {
				t.Errorf("%s: ReadAt(512) = %v, %v", c.backing, buf[0], err)
			}
			if n, err := format.AllocatedBytes(format.TopLayer(img)); err != nil || n != 512 {
				t.Errorf("%s: the layer's own data: %d, %v", c.backing, n, err)
			}
		}
		img.Close()
	}
	// A chain that opens has no backing error.
	writeLayer(t, filepath.Join(dir, "base"), "TSTL size 512")
	writeLayer(t, filepath.Join(dir, "top"), "TSTL size 1024", "backing base")
	img, err := format.Open(filepath.Join(dir, "top"), "", format.Policy{DeferBackingErrors: true})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	if err := format.BackingError(img); err != nil || img.Info().Backing == nil {
		t.Errorf("BackingError %v, backing %v", err, img.Info().Backing)
	}
}

// TestChainGivenParentsLinear: each layer of a chain of differencing
// images tries the given parents in turn; a wrong one's identity is
// checked before its own chain is opened, so the opens stay a few per
// candidate and level instead of growing with the depth as a power.
func TestChainGivenParentsLinear(t *testing.T) {
	dir := t.TempDir()
	const n = 12
	var parents []string
	for i := range n {
		lines := []string{"TSTL size 512", fmt.Sprintf("self L%d", i)}
		if i > 0 {
			lines = append(lines, fmt.Sprintf("id L%d", i-1))
		}
		path := filepath.Join(dir, fmt.Sprintf("l%d", i))
		writeLayer(t, path, lines...)
		// The base first: every layer tries the layers under its parent
		// first, each with a chain of its own.
		parents = append(parents, path)
	}
	before := layerOpens.Load()
	img := formattest.OpenPolicy(t, parents[n-1], "", format.Policy{Parents: parents})
	if e, err := img.Extent(0); err != nil || e.Depth != n-1 {
		t.Errorf("Extent(0) = %+v, %v; want depth %d", e, err, n-1)
	}
	if opens := layerOpens.Load() - before; opens > 3*n*n {
		t.Errorf("%d layers opened for a chain of %d with %d candidates", opens, n, n)
	}
}
