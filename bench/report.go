package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// Report is the outcome of a run; it renders as a table or as JSON.
type Report struct {
	Date        string       `json:"date"`
	CPUs        int          `json:"cpus"`
	OS          string       `json:"os"`
	QemuVersion string       `json:"qemu-version,omitempty"`
	Runs        int          `json:"runs"`
	Quick       bool         `json:"quick"`
	CacheMode   string       `json:"cache"` // warm: input read before each run; dropped: page cache emptied
	RSSMethod   string       `json:"rss-method"`
	WorkDir     string       `json:"work-dir,omitempty"`
	Cases       []*Case      `json:"cases"`
	References  []*Reference `json:"references"`
	Targets     []Target     `json:"targets"`
	Notes       []string     `json:"notes,omitempty"`
}

// Case is one conversion, timed with both tools.
type Case struct {
	Corpus     string  `json:"corpus"`
	Input      string  `json:"input"`
	Output     string  `json:"output"`
	Size       int64   `json:"size"` // virtual size in bytes
	Compressed bool    `json:"compressed,omitempty"`
	Diskimg    *Result `json:"diskimg,omitempty"`
	Qemu       *Result `json:"qemu-img,omitempty"`
	// Ratio is qemu-img's time over diskimg's: above 1, diskimg is faster.
	// 0 when there is no comparison.
	Ratio    float64 `json:"ratio,omitempty"`
	QemuNote string  `json:"qemu-note,omitempty"` // why there is no qemu-img result
	Skipped  string  `json:"skipped,omitempty"`   // why the case did not run
}

// Result is one tool's timings for a case.
type Result struct {
	Seconds float64   `json:"seconds"` // median wall time
	MBps    float64   `json:"mb-per-s"`
	MaxRSS  int64     `json:"peak-rss-kib"` // largest over the runs
	Runs    []float64 `json:"runs,omitempty"`
	Error   string    `json:"error,omitempty"`
	// AtLeast marks a run stopped at Config.QemuLimit: Seconds is a lower
	// bound, and so is the case's ratio.
	AtLeast bool `json:"at-least,omitempty"`
}

// Reference is a plain copy of the raw disk: the physical limit.
type Reference struct {
	Corpus  string  `json:"corpus"`
	Tool    string  `json:"tool"`
	Size    int64   `json:"size"`
	Result  *Result `json:"result,omitempty"`
	Skipped string  `json:"skipped,omitempty"`
}

// Target is one of issue #7's goals and whether the run met it.
type Target struct {
	Name     string   `json:"name"`
	Met      bool     `json:"met"`
	Measured string   `json:"measured"`
	Misses   []string `json:"misses,omitempty"`
}

// median returns the middle value (the mean of the two middle ones for an
// even count); 0 for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// summarize turns samples of converting size bytes into a Result. MB/s
// is virtual bytes (10^6) per second.
func summarize(samples []sample, size int64) *Result {
	r := &Result{}
	for _, s := range samples {
		r.Runs = append(r.Runs, s.seconds)
		r.MaxRSS = max(r.MaxRSS, s.maxRSS)
		r.AtLeast = r.AtLeast || s.capped
	}
	r.Seconds = median(r.Runs)
	if r.Seconds > 0 {
		r.MBps = float64(size) / 1e6 / r.Seconds
	}
	return r
}

const (
	rssTarget      = 256 << 10 // KiB: peak RSS goal
	hugeTarget     = 0.1       // seconds for an empty 1 TiB image
	holeFactor     = 1.25      // holes under blocks: at most this times qemu-img's time
	holeSlack      = 0.05      // seconds, plus this
	denseTarget    = 0.7       // share of cat's throughput on dense data
	plainTarget    = 1.0       // ratio on uncompressed outputs
	compressTarget = 2.0       // ratio on compressed outputs
)

// evaluate checks the report against issue #7's targets.
func evaluate(r *Report) []Target {
	ratio := func(name string, want float64, compressed bool) Target {
		t := Target{Name: name, Met: true}
		lo, n := 0.0, 0
		for _, c := range r.Cases {
			if c.Ratio == 0 || c.Compressed != compressed || holeCorpus(c.Corpus) {
				continue
			}
			if n == 0 || c.Ratio < lo {
				lo = c.Ratio
			}
			n++
			if c.Ratio < want {
				t.Met = false
				t.Misses = append(t.Misses, fmt.Sprintf("%s %s->%s %.2fx", c.Corpus, c.Input, c.Output, c.Ratio))
			}
		}
		if n == 0 {
			t.Measured = "no comparable case"
			return t
		}
		t.Measured = fmt.Sprintf("lowest %.2fx over %d cases", lo, n)
		return t
	}
	ts := []Target{
		ratio("diskimg >= 1.0x qemu-img, uncompressed outputs", plainTarget, false),
		ratio("diskimg >= 2x qemu-img, compressed outputs", compressTarget, true),
	}

	holes := Target{Name: "holes under blocks (prealloc, fixed) within 1.25x qemu-img + 50 ms", Met: true}
	n := 0
	for _, c := range r.Cases {
		if !holeCorpus(c.Corpus) || c.Ratio == 0 {
			continue
		}
		n++
		if c.Diskimg.Seconds > holeFactor*c.Qemu.Seconds+holeSlack {
			holes.Met = false
			holes.Misses = append(holes.Misses, fmt.Sprintf("%s %s->%s %.3fs (qemu-img %.3fs)", c.Corpus, c.Input, c.Output, c.Diskimg.Seconds, c.Qemu.Seconds))
		}
	}
	holes.Measured = fmt.Sprintf("%d cases", n)
	if n == 0 {
		holes.Measured = "no comparable case"
	}
	ts = append(ts, holes)

	huge := Target{Name: "empty 1 TiB in < 0.1 s, every input format", Met: true}
	worst := 0.0
	n = 0
	for _, c := range r.Cases {
		if c.Corpus != "empty" || c.Diskimg == nil || c.Diskimg.Error != "" {
			continue
		}
		worst = max(worst, c.Diskimg.Seconds)
		n++
		if c.Diskimg.Seconds >= hugeTarget {
			huge.Met = false
			huge.Misses = append(huge.Misses, fmt.Sprintf("%s->%s %.3fs", c.Input, c.Output, c.Diskimg.Seconds))
		}
	}
	huge.Measured = fmt.Sprintf("slowest %.3fs over %d cases", worst, n)
	if n == 0 {
		huge.Measured = "no case"
	}
	ts = append(ts, huge)

	dense := Target{Name: "dense raw->raw >= 70% of cat"}
	var cat, conv *Result
	for _, ref := range r.References {
		if ref.Corpus == "dense" && ref.Tool == "cat" {
			cat = ref.Result
		}
	}
	for _, c := range r.Cases {
		if c.Corpus == "dense" && c.Input == "raw" && c.Output == "raw" {
			conv = c.Diskimg
		}
	}
	if cat != nil && conv != nil && conv.Error == "" && cat.MBps > 0 {
		share := conv.MBps / cat.MBps
		dense.Met = share >= denseTarget
		dense.Measured = fmt.Sprintf("%.0f%% (%.0f of %.0f MB/s)", share*100, conv.MBps, cat.MBps)
	} else {
		dense.Measured = "not measured"
	}
	ts = append(ts, dense)

	rss := Target{Name: "diskimg peak RSS < 256 MiB", Met: true}
	var top int64
	for _, c := range r.Cases {
		if c.Diskimg == nil {
			continue
		}
		top = max(top, c.Diskimg.MaxRSS)
		if c.Diskimg.MaxRSS >= rssTarget {
			rss.Met = false
			rss.Misses = append(rss.Misses, fmt.Sprintf("%s %s->%s %s", c.Corpus, c.Input, c.Output, human(c.Diskimg.MaxRSS<<10)))
		}
	}
	rss.Measured = "largest " + human(top<<10)
	ts = append(ts, rss)
	return ts
}

// holeCorpus reports the corpora whose blocks are holes in their files.
func holeCorpus(name string) bool {
	for _, hc := range holeCorpora {
		if hc.name == name {
			return true
		}
	}
	return false
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes the report as aligned text tables: the cases, the
// physical reference, the targets and notes.
func (r *Report) WriteTable(w io.Writer) error {
	qemu := r.QemuVersion
	if qemu == "" {
		qemu = "qemu-img unavailable"
	}
	fmt.Fprintf(w, "%s, %d CPUs, %s; %s; median of %d runs, page cache %s; RSS: %s\n", r.Date, r.CPUs, r.OS, qemu, r.Runs, r.CacheMode, r.RSSMethod)
	fmt.Fprintf(w, "ratio = qemu-img time / diskimg time (above 1: diskimg is faster); MB/s = virtual MB per second;\n")
	fmt.Fprintf(w, "times include flushing the output to disk (fsync), which diskimg does itself and qemu-img does not\n\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "corpus\tin\tout\tsize\tdiskimg\tMB/s\tqemu-img\tMB/s\tratio\tRSS diskimg\tRSS qemu-img\t")
	for _, c := range r.Cases {
		fmt.Fprintln(tw, c.line())
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "reference\tcorpus\tsize\ttime\tMB/s\tRSS\t")
	for _, ref := range r.References {
		if ref.Skipped != "" || ref.Result == nil {
			fmt.Fprintf(tw, "%s\t%s\t%s\tskipped: %s\t\t\t\n", ref.Tool, ref.Corpus, human(ref.Size), ref.Skipped)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", ref.Tool, ref.Corpus, human(ref.Size), secs(ref.Result.Seconds), rate(ref.Result.MBps), human(ref.Result.MaxRSS<<10))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	writeTargets(w, r.Targets, r.Notes)
	return nil
}

// writeTargets writes each target as met or MISS, then the notes.
func writeTargets(w io.Writer, targets []Target, notes []string) {
	for _, t := range targets {
		mark := "met "
		if !t.Met {
			mark = "MISS"
		}
		fmt.Fprintf(w, "%s  %s: %s\n", mark, t.Name, t.Measured)
		for _, m := range t.Misses {
			fmt.Fprintf(w, "        %s\n", m)
		}
	}
	for _, n := range notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
}

// logLine is the case as a progress line.
func (c *Case) logLine() string {
	s := fmt.Sprintf("%-6s %-5s -> %-11s", c.Corpus, c.Input, c.Output)
	if c.Skipped != "" {
		return s + " skipped: " + c.Skipped
	}
	part := func(tool string, r *Result, note string) string {
		switch {
		case r == nil:
			return " " + tool + " " + note
		case r.Error != "":
			return " " + tool + " failed: " + r.Error
		}
		if r.AtLeast {
			return fmt.Sprintf(" %s >%s (stopped)", tool, secs(r.Seconds))
		}
		return fmt.Sprintf(" %s %s %s MB/s %s", tool, secs(r.Seconds), rate(r.MBps), human(r.MaxRSS<<10))
	}
	s += part("diskimg", c.Diskimg, "") + ";" + part("qemu-img", c.Qemu, c.QemuNote)
	if c.Ratio > 0 {
		at := ""
		if c.Qemu != nil && c.Qemu.AtLeast {
			at = ">"
		}
		s += fmt.Sprintf("; %s%.2fx", at, c.Ratio)
	}
	return s
}

// line is the case's table row, tab separated.
func (c *Case) line() string {
	cols := []string{c.Corpus, c.Input, c.Output, human(c.Size)}
	if c.Skipped != "" {
		cols = append(cols, "skipped: "+c.Skipped, "", "", "", "", "", "")
		return strings.Join(cols, "\t") + "\t"
	}
	res := func(r *Result, note string) (string, string, string) {
		switch {
		case r == nil:
			return note, "", ""
		case r.Error != "":
			return "failed: " + r.Error, "", ""
		case r.AtLeast:
			return ">" + secs(r.Seconds) + " (stopped)", "", ""
		}
		return secs(r.Seconds), rate(r.MBps), human(r.MaxRSS << 10)
	}
	dt, dr, drss := res(c.Diskimg, "")
	qt, qr, qrss := res(c.Qemu, c.QemuNote)
	ratio := "n/a"
	if c.Ratio > 0 {
		ratio = fmt.Sprintf("%.2fx", c.Ratio)
		if c.Qemu != nil && c.Qemu.AtLeast {
			ratio = ">" + ratio
		}
	}
	return strings.Join([]string{c.Corpus, c.Input, c.Output, human(c.Size), dt, dr, qt, qr, ratio, drss, qrss}, "\t") + "\t"
}

func secs(s float64) string { return fmt.Sprintf("%.3fs", s) }

func rate(mbps float64) string {
	if mbps >= 100000 {
		return fmt.Sprintf("%.0fk", mbps/1000)
	}
	return fmt.Sprintf("%.0f", mbps)
}

// human formats a byte count with binary units.
func human(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	v := float64(n)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 || v == float64(int64(v)) {
		return fmt.Sprintf("%.0f %s", v, units[i])
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}
