package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/diskimg/diskimg/format/remote"
	"github.com/diskimg/diskimg/format/remote/remotetest"
)

// ObjectConfig says how to run the object-storage cases: converting
// straight into a bucket against qemu-img converting to a local file that
// is then uploaded.
type ObjectConfig struct {
	// Diskimg and QemuImg are the binaries, as in Config.
	Diskimg, QemuImg string
	// Endpoint is the S3 endpoint, with credentials in the environment;
	// "" starts a local SeaweedFS (remotetest.WeedBinary).
	Endpoint  string
	PathStyle bool
	// Bucket holds the objects; they are removed afterwards.
	Bucket string
	// Dir is where the work directory is made; "" is the system temp dir.
	Dir string
	// Runs per tool and case; the median is reported.
	Runs int
	// Sizes: RandomDisk/RandomData, Dense and Huge (the sparse disk
	// planned and converted with --cloud) are used.
	Sizes Sizes
	Log   io.Writer
}

// ObjectCase is one object-storage case.
type ObjectCase struct {
	Corpus string `json:"corpus"`
	Input  string `json:"input"`
	Output string `json:"output"`
	// Options are the output's -o options (both tools).
	Options string `json:"options,omitempty"`
	Size    int64  `json:"virtual-size"`
	// OnePass is `diskimg convert SRC s3://…` (with Cloud, `diskimg
	// convert --cloud`: plan, convert, upload, read back and compare).
	OnePass *Result `json:"one-pass"`
	// TwoStep is `qemu-img convert SRC FILE` then the upload of FILE by
	// diskimg with the same client settings; its time is the sum.
	// TwoStepSynced adds an fsync of FILE before the upload: the local
	// copy of a large image does not stay in the page cache.
	TwoStep       *Result `json:"two-step,omitempty"`
	TwoStepSynced *Result `json:"two-step-synced,omitempty"`
	Ratio         float64 `json:"ratio,omitempty"`
	RatioSynced   float64 `json:"ratio-synced,omitempty"`
	// With Cloud, TwoStepVerified adds `diskimg compare SRC s3://…` to
	// TwoStep: the same assurance as the one pass, which reads back.
	TwoStepVerified *Result `json:"two-step-verified,omitempty"`
	RatioVerified   float64 `json:"ratio-verified,omitempty"`
	Cloud           string  `json:"cloud,omitempty"`
	// MaxLocalFile is the largest file (allocated bytes) the one-pass
	// run had open for writing, sampled every 20 ms; LocalFile is the
	// two-step's intermediate file.
	MaxLocalFile int64 `json:"max-local-file"`
	LocalFile    int64 `json:"two-step-local-file,omitempty"`
}

// ObjectReport is the result of RunObject.
type ObjectReport struct {
	Date     string        `json:"date"`
	Endpoint string        `json:"endpoint"`
	Server   string        `json:"server"`
	Runs     int           `json:"runs"`
	Load     [2]float64    `json:"load-average-before-after"`
	Cases    []*ObjectCase `json:"cases"`
}

// RunObject makes the corpus (the random and dense disks as qcow2 and
// raw, and a sparse disk of Sizes.Huge with the random disk's data) and
// times each case: every input to qcow2, and the random disk also to a
// streamOptimized VMDK.
func RunObject(ctx context.Context, c ObjectConfig) (*ObjectReport, error) {
	if c.Runs < 1 || c.Runs > 100 {
		return nil, fmt.Errorf("bench: runs must be 1 to 100, not %d", c.Runs)
	}
	if c.QemuImg == "" {
		c.QemuImg = "qemu-img"
	}
	if c.Bucket == "" {
		c.Bucket = remotetest.Bucket
	}
	logf := func(f string, a ...any) {
		if c.Log != nil {
			fmt.Fprintf(c.Log, f+"\n", a...)
		}
	}
	work, err := os.MkdirTemp(c.Dir, "diskimg-bench-s3-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	rep := &ObjectReport{Date: time.Now().UTC().Format(time.RFC3339), Endpoint: c.Endpoint, Server: "as given", Runs: c.Runs}
	if c.Endpoint == "" {
		weed := remotetest.WeedBinary()
		if weed == "" {
			return nil, errors.New("bench: no S3 endpoint given and SeaweedFS is not built (.ci/setup-seaweedfs)")
		}
		// Its credentials, for this process and the timed ones.
		for _, kv := range (&remotetest.Server{}).Env() {
			k, v, _ := strings.Cut(kv, "=")
			os.Setenv(k, v)
		}
		dir := filepath.Join(work, "weed")
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, err
		}
		srv, err := remotetest.Start(weed, dir)
		if err != nil {
			return nil, err
		}
		defer srv.Close()
		c.Endpoint, c.PathStyle = srv.Endpoint, true
		rep.Endpoint, rep.Server = srv.Endpoint, "SeaweedFS "+remotetest.WeedVersion+" on this machine"
	}
	env := os.Environ()
	s3args := []string{"--endpoint", c.Endpoint}
	if c.PathStyle {
		s3args = append(s3args, "--s3-path-style")
	}
	rep.Load[0] = loadAverage()

	s := c.Sizes
	type input struct{ corpus, format, path string }
	var inputs []input
	mk := func(corpus string, size int64, make func(string) error, formats ...string) error {
		raw := filepath.Join(work, corpus+".raw")
		if err := make(raw); err != nil {
			return err
		}
		for _, f := range formats {
			p := raw
			if f != "raw" {
				p = filepath.Join(work, corpus+"."+f)
				if err := run(ctx, env, c.QemuImg, "convert", "-f", "raw", "-O", f, raw, p); err != nil {
					return err
				}
			}
			inputs = append(inputs, input{corpus, f, p})
		}
		return nil
	}
	if err := mk("random", s.RandomDisk, func(p string) error { return makeRandom(p, s.RandomDisk, s.RandomData) }, "qcow2"); err != nil {
		return nil, err
	}
	if err := mk("dense", s.Dense, func(p string) error { return makeDense(p, s.Dense) }, "raw"); err != nil {
		return nil, err
	}
	if err := mk("sparse", s.Huge, func(p string) error { return makeRandom(p, s.Huge, s.RandomData) }, "raw"); err != nil {
		return nil, err
	}
	sizes := map[string]int64{"random": s.RandomDisk, "dense": s.Dense, "sparse": s.Huge}

	prefix := fmt.Sprintf("s3://%s/diskimg-bench-%d/", c.Bucket, time.Now().UnixNano())
	var objects []string
	defer func() {
		o := remote.Options{Endpoint: c.Endpoint, PathStyle: c.PathStyle}
		for _, name := range objects {
			remote.Remove(context.Background(), name, o)
		}
	}()
	// The random disk also goes out as a streamOptimized VMDK, the format
	// AWS VM Import takes: compressed, so the conversion weighs as much
	// as the upload.
	type objectCase struct {
		in        input
		out, opts string
	}
	cases := []objectCase{{inputs[0], "qcow2", ""}, {inputs[0], "vmdk", "subformat=streamOptimized"}, {inputs[1], "qcow2", ""}, {inputs[2], "qcow2", ""}}
	for i, cs := range cases {
		in := cs.in
		oc := &ObjectCase{Corpus: in.corpus, Input: in.format, Output: cs.out, Options: cs.opts, Size: sizes[in.corpus]}
		if in.corpus == "sparse" {
			oc.Cloud = "huawei-ims"
		}
		rep.Cases = append(rep.Cases, oc)
		outArgs := []string{"-O", oc.Output}
		if oc.Options != "" {
			outArgs = append(outArgs, "-o", oc.Options)
		}
		one := fmt.Sprintf("%s%s-%d-one.%s", prefix, in.corpus, i, oc.Output)
		two := fmt.Sprintf("%s%s-%d-two.%s", prefix, in.corpus, i, oc.Output)
		local := filepath.Join(work, "two."+oc.Output)
		objects = append(objects, one, two)
		var ones, twos, synced, verified []sample
		for r := range c.Runs {
			for k := range 2 {
				if (r+k)%2 == 0 {
					args := append(append(append(append([]string{"convert"}, s3args...), "--force", "-f", in.format), outArgs...), in.path, one)
					if oc.Cloud != "" {
						// A data disk: the corpus has no partition table.
						args = append(append([]string{"convert"}, s3args...), "--force", "--cloud", oc.Cloud, "--disk", "data", in.path, prefix+"cloud/")
						objects = append(objects, prefix+"cloud/"+in.corpus+".qcow2")
					}
					if err := warm(in.path); err != nil {
						return nil, err
					}
					syscall.Sync()
					var biggest int64
					sm, err := timeCmdWatch(ctx, env, nil, func(pgid int, stop <-chan struct{}) { biggest = watchFiles(pgid, stop) }, c.Diskimg, args...)
					if err != nil {
						return nil, fmt.Errorf("bench: %s: %w", in.corpus, err)
					}
					oc.MaxLocalFile = max(oc.MaxLocalFile, biggest)
					ones = append(ones, sm)
					continue
				}
				if err := warm(in.path); err != nil {
					return nil, err
				}
				os.Remove(local)
				syscall.Sync()
				q, err := timeCmd(ctx, env, nil, c.QemuImg, append(append([]string{"convert", "-f", in.format}, outArgs...), in.path, local)...)
				if err != nil {
					return nil, err
				}
				unsynced := q.seconds
				if err := durable(&q, local); err != nil {
					return nil, err
				}
				if fi, err := os.Stat(local); err == nil {
					if st, ok := fi.Sys().(*syscall.Stat_t); ok {
						oc.LocalFile = st.Blocks * 512
					}
				}
				up, err := timeCmd(ctx, env, nil, c.Diskimg, append(append([]string{"convert"}, s3args...), "--force", "-f", "raw", "-O", "raw", local, two)...)
				if err != nil {
					return nil, err
				}
				twos = append(twos, sample{seconds: unsynced + up.seconds, maxRSS: max(q.maxRSS, up.maxRSS)})
				synced = append(synced, sample{seconds: q.seconds + up.seconds, maxRSS: max(q.maxRSS, up.maxRSS)})
				if oc.Cloud != "" {
					cmp, err := timeCmd(ctx, env, nil, c.Diskimg, append(append([]string{"compare"}, s3args...), "-f", in.format, "-F", oc.Output, in.path, two)...)
					if err != nil {
						return nil, err
					}
					verified = append(verified, sample{seconds: unsynced + up.seconds + cmp.seconds, maxRSS: max(q.maxRSS, up.maxRSS, cmp.maxRSS)})
				}
			}
		}
		oc.OnePass, oc.TwoStep, oc.TwoStepSynced = summarize(ones, oc.Size), summarize(twos, oc.Size), summarize(synced, oc.Size)
		if oc.OnePass.Seconds > 0 {
			oc.Ratio = oc.TwoStep.Seconds / oc.OnePass.Seconds
			oc.RatioSynced = oc.TwoStepSynced.Seconds / oc.OnePass.Seconds
		}
		if len(verified) > 0 {
			oc.TwoStepVerified = summarize(verified, oc.Size)
			oc.RatioVerified = oc.TwoStepVerified.Seconds / oc.OnePass.Seconds
			logf("%s: two steps and compare %.3fs (%.2fx)", in.corpus, oc.TwoStepVerified.Seconds, oc.RatioVerified)
		}
		logf("%s %s -> s3 %s %s: one pass %.3fs, two steps %.3fs (%.2fx), synced %.3fs (%.2fx), RSS %s, largest local file %s",
			in.corpus, in.format, oc.Output, oc.Options, oc.OnePass.Seconds, oc.TwoStep.Seconds, oc.Ratio, oc.TwoStepSynced.Seconds, oc.RatioSynced, human(oc.OnePass.MaxRSS<<10), human(oc.MaxLocalFile))
	}
	rep.Load[1] = loadAverage()
	return rep, nil
}

// watchFiles samples the files that the processes of group pgid have
// open for writing until stop is closed, and returns the most bytes any
// of them allocated: the local scratch space a run used (an unlinked
// spool file counts too).
func watchFiles(pgid int, stop <-chan struct{}) int64 {
	var biggest int64
	for {
		procs, _ := filepath.Glob("/proc/[0-9]*")
		for _, p := range procs {
			if !inGroup(p, pgid) {
				continue
			}
			fds, _ := os.ReadDir(filepath.Join(p, "fd"))
			for _, fd := range fds {
				info, err := os.ReadFile(filepath.Join(p, "fdinfo", fd.Name()))
				if err != nil || !writable(string(info)) {
					continue
				}
				fi, err := os.Stat(filepath.Join(p, "fd", fd.Name()))
				if err != nil || !fi.Mode().IsRegular() {
					continue
				}
				if st, ok := fi.Sys().(*syscall.Stat_t); ok {
					biggest = max(biggest, st.Blocks*512)
				}
			}
		}
		select {
		case <-stop:
			return biggest
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// inGroup reports whether the process at /proc/PID is in group pgid.
func inGroup(proc string, pgid int) bool {
	data, err := os.ReadFile(filepath.Join(proc, "stat"))
	if err != nil {
		return false
	}
	// pid (comm) state ppid pgrp ...: comm may hold spaces.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(string(data[i+1:]))
	return len(f) > 2 && f[2] == strconv.Itoa(pgid)
}

// writable reports whether an fdinfo's flags open the file for writing.
func writable(fdinfo string) bool {
	for _, line := range strings.Split(fdinfo, "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			return err == nil && flags&syscall.O_ACCMODE != syscall.O_RDONLY
		}
	}
	return false
}

func loadAverage() float64 {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// WriteTable prints the cases as a table.
func (r *ObjectReport) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "object storage: %s (%s), %d runs, load average %.2f before, %.2f after\n", r.Endpoint, r.Server, r.Runs, r.Load[0], r.Load[1])
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "corpus\tin\tout\tsize\tone pass\ttwo steps\tratio\tsynced\tratio\tverified\tratio\tRSS one pass\tRSS two steps\tlargest local file\ttwo-step local file")
	for _, c := range r.Cases {
		name := c.Corpus
		if c.Cloud != "" {
			name += " (--cloud " + c.Cloud + ")"
		}
		out := c.Output
		if c.Options != "" {
			out += " " + c.Options
		}
		verified, ratio := "-", "-"
		if c.TwoStepVerified != nil {
			verified, ratio = fmt.Sprintf("%.3fs", c.TwoStepVerified.Seconds), fmt.Sprintf("%.2fx", c.RatioVerified)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.3fs\t%.3fs\t%.2fx\t%.3fs\t%.2fx\t%s\t%s\t%s\t%s\t%s\t%s\n", name, c.Input, out, human(c.Size),
			c.OnePass.Seconds, c.TwoStep.Seconds, c.Ratio, c.TwoStepSynced.Seconds, c.RatioSynced, verified, ratio,
			human(c.OnePass.MaxRSS<<10), human(c.TwoStep.MaxRSS<<10), human(c.MaxLocalFile), human(c.LocalFile))
	}
	return tw.Flush()
}
