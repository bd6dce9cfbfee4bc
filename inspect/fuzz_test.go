package inspect

import (
	"bytes"
	"encoding/binary"
	"path/filepath"
	"testing"
	"time"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/formattest"
)

// Per-parser fuzz tests: each calls one parser directly on a device over
// the input, seeded with every file in testdata/inspect.

const fuzzMaxInput = 4 << 20

// sparseMagic starts a sparse seed: a device size, then (sector number,
// 512 bytes) records for its non-zero sectors. It keeps seeds of
// filesystems whose metadata is spread over megabytes small.
const sparseMagic = "SPRS"

// sparseEncode encodes the non-zero sectors of data, leaving out sectors
// filled with 0xff (NTFS's empty $LogFile), which no parser reads.
func sparseEncode(data []byte) []byte {
	out := binary.LittleEndian.AppendUint32([]byte(sparseMagic), uint32(len(data)))
	ff := bytes.Repeat([]byte{0xff}, 512)
	for i := 0; i+512 <= len(data); i += 512 {
		s := data[i : i+512]
		if format.IsZero(s) || bytes.Equal(s, ff) {
			continue
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(i/512))
		out = append(out, s...)
	}
	return out
}

// fuzzBytes returns the disk an input stands for: the input itself, or
// the decoded sparse image (at most fuzzMaxInput bytes).
func fuzzBytes(in []byte) []byte {
	if len(in) < 8 || string(in[:4]) != sparseMagic {
		return in
	}
	size := int(binary.LittleEndian.Uint32(in[4:]))
	if size > fuzzMaxInput {
		return nil
	}
	d := make([]byte, size)
	for p := 8; p+4+512 <= len(in); p += 4 + 512 {
		off := int64(binary.LittleEndian.Uint32(in[p:])) * 512
		if off+512 <= int64(size) {
			copy(d[off:], in[p+4:p+4+512])
		}
	}
	return d
}

// fuzzParser runs fn on a budgeted device over each input and fails when
// it is slow.
func fuzzParser(f *testing.F, fn func(d dev, r *Report)) {
	formattest.AddSeeds(f, filepath.Join("..", "testdata", "inspect"))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > fuzzMaxInput {
			return
		}
		data := fuzzBytes(in)
		budget := int64(maxReadBudget)
		d := dev{r: bytes.NewReader(data), size: int64(len(data)), budget: &budget}
		r := &Report{}
		start := time.Now()
		fn(d, r)
		if el := time.Since(start); el > 3*time.Second {
			t.Fatalf("took %v", el)
		}
	})
}

func FuzzGPT(f *testing.F) {
	fuzzParser(f, func(d dev, r *Report) { readGPT(d, r) })
}

func FuzzMBR(f *testing.F) {
	fuzzParser(f, func(d dev, r *Report) {
		if s0, err := d.read(0, sectorSize); err == nil && mbrLooksValid(s0) {
			readMBR(d, s0, r)
		}
	})
}

func FuzzExt4(f *testing.F) {
	fuzzParser(f, func(d dev, r *Report) {
		probeExt(d, "disk", r)
		if fs, err := newExtFS(d); err == nil {
			if o := linuxOS(fs); o != nil {
				linuxFacts(d, fs, o, r)
			}
		}
	})
}

func FuzzXFS(f *testing.F) {
	fuzzParser(f, func(d dev, r *Report) { probeXFS(d, "disk", r) })
}

func FuzzNTFS(f *testing.F) {
	fuzzParser(f, func(d dev, r *Report) {
		probeNTFS(d, "disk", r)
		windowsOS(d, "disk", r)
	})
}

func FuzzFAT(f *testing.F) {
	fuzzParser(f, func(d dev, r *Report) {
		probeFAT(d, "disk", r)
		probeExFAT(d, "disk", r)
		espLoaders(d, 1, r)
		if bs, err := d.read(0, 512); err == nil {
			if v, _, err := parseFATBoot(d, bs); err == nil && v != nil {
				v.readDir("/", 64)
				v.readPath("/vmlinuz", 1<<20)
			}
		}
	})
}

// FuzzOther covers the remaining probes: btrfs, swap, LUKS, LVM2, ISO
// 9660, BitLocker.
func FuzzOther(f *testing.F) {
	fuzzParser(f, func(d dev, r *Report) {
		for _, p := range []probe{probeBtrfs, probeSwap, probeLUKS, probeLVM, probeISO, probeBitLocker} {
			p(d, "disk", r)
		}
	})
}

func FuzzRegistry(f *testing.F) {
	fuzzParser(f, func(d dev, r *Report) {
		if h, err := openHive(d.read, d.size); err == nil {
			o := &OS{}
			hiveVersion(h, o)
			hiveSystem(h, o)
			windowsName(o)
		}
	})
}

func FuzzPE(f *testing.F) {
	fuzzParser(f, func(d dev, r *Report) {
		if h, err := peHeader(d.read, d.size); err == nil {
			peArch(h)
			peVersion(d.read, d.size, &OS{})
		}
	})
}

func FuzzFstab(f *testing.F) {
	f.Add([]byte("UUID=abc / ext4 defaults 0 1\n/dev/sda1 /boot ext4 defaults\nLABEL=a\\040b /x vfat\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		pt := &PartitionTable{Type: "mbr", UUID: "12345678", Partitions: []Partition{{Number: 1, Filesystem: &Filesystem{UUID: "abc"}}}}
		for _, e := range fstabEntries(in) {
			partitionOf(e.Spec, pt)
		}
	})
}

// TestNTFSSeed reads Windows from the sparse NTFS seed, so the fuzz
// corpus starts from a volume whose directory walk succeeds.
func TestNTFSSeed(t *testing.T) {
	t.Parallel()
	b := formattest.ReadFile(t, filepath.Join("..", "testdata", "inspect", "ntfs-windows.seed"))
	data := fuzzBytes(b)
	r := &Report{}
	o, err := windowsOS(memDev(data), "disk", r)
	if err != nil || o == nil || o.PrettyName != testProduct || o.Arch != "x86_64" {
		t.Errorf("os %+v %v findings %v", o, err, r.Findings)
	}
}
