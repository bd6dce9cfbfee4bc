package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/format"
)

// qemu-img check's exit codes.
const (
	checkClean       = 0
	checkFailed      = 1 // the image could not be opened or checked
	checkCorrupt     = 2
	checkLeaks       = 3 // leaked clusters, no corruption
	checkUnsupported = 63
)

func checkCommand() *cli.Command {
	cmd := imageCommand("check", "FILE", "check an image's structure for corruptions and leaks (like qemu-img check)", runCheck, outputFlag)
	cmd.Description = "Reads metadata only and never writes. Backing files are not opened: each image\n" +
		"of a chain is checked on its own. With --untrusted, also lists the safety findings:\n" +
		"files the image refers to and whether policy allows them, format confusion, sizes\n" +
		"out of proportion to the file.\n\n" +
		"Exit codes, as qemu-img check's:\n" +
		"   0  no corruptions or leaks found\n" +
		"   1  the image could not be opened, or the check itself failed (check errors)\n" +
		"   2  corruptions found\n" +
		"   3  leaked clusters found, no corruption\n" +
		"  63  the image format does not support checks"
	return cmd
}

func runCheck(c *cli.Context) error {
	mode, err := outputMode(c)
	if err != nil {
		return err
	}
	if c.NArg() != 1 {
		return fmt.Errorf("check: expected one FILE argument, got %d", c.NArg())
	}
	path := c.Args().First()
	p := policyOf(c)
	// A check looks at one image; the backing chain is never needed.
	p.NoBacking = true
	untrusted := c.Bool(untrustedFlag.Name)
	w, ew := c.App.Writer, c.App.ErrWriter

	var r *format.CheckResult
	img, err := openPolicy(c, path, c.String(formatFlag.Name), p)
	if err != nil {
		// A corruption that stops Open may still be what check reports.
		if r = checkUnopenable(c, path, err); r == nil {
			if untrusted {
				writeFindings(w, mode, format.Findings(path, nil, p))
			}
			return err
		}
	} else {
		defer img.Close()
		ch, ok := img.(format.Checker)
		if !ok {
			if untrusted {
				writeFindings(w, mode, format.Findings(path, img, p))
			}
			return &exitError{checkUnsupported, errors.New("This image format does not support checks")}
		}
		if r, err = ch.Check(c.Context); err != nil {
			return fmt.Errorf("%s: check failed: %w", path, err)
		}
		r.Format = img.Info().Format
	}
	r.Filename = path
	// qemu-img prints each problem on standard error.
	for _, line := range r.Problems {
		fmt.Fprintln(ew, line)
	}
	for _, line := range r.Warnings {
		fmt.Fprintln(ew, line)
	}
	var findings []format.Finding
	if untrusted {
		findings = format.Findings(path, img, p)
	}
	if mode == "json" {
		if err := writeCheckJSON(w, r, findings, untrusted); err != nil {
			return err
		}
	} else {
		writeCheckText(w, r)
		if untrusted {
			writeFindings(w, mode, findings)
		}
	}
	switch {
	case r.CheckErrors != 0:
		return &exitError{checkFailed, errors.New("Check failed")}
	case r.Corruptions != 0:
		return &exitError{checkCorrupt, nil}
	case r.Leaks != 0:
		return &exitError{checkLeaks, nil}
	}
	return nil
}

// writeCheckText prints r as qemu-img check does.
func writeCheckText(w io.Writer, r *format.CheckResult) {
	if r.Corruptions == 0 && r.Leaks == 0 && r.CheckErrors == 0 {
		fmt.Fprintln(w, "No errors were found on the image.")
	} else {
		if r.Corruptions != 0 {
			fmt.Fprintf(w, "\n%d errors were found on the image.\n"+
				"Data may be corrupted, or further writes to the image may corrupt it.\n", r.Corruptions)
		}
		if r.Leaks != 0 {
			fmt.Fprintf(w, "\n%d leaked clusters were found on the image.\n"+
				"This means waste of disk space, but no harm to data.\n", r.Leaks)
		}
		if r.CheckErrors != 0 {
			fmt.Fprintf(w, "\n%d internal errors have occurred during the check.\n", r.CheckErrors)
		}
	}
	if r.TotalClusters != 0 && r.AllocatedClusters != 0 {
		a := float64(r.AllocatedClusters)
		fmt.Fprintf(w, "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
			r.AllocatedClusters, r.TotalClusters, a*100/float64(r.TotalClusters),
			float64(r.FragmentedClusters)*100/a, float64(r.CompressedClusters)*100/a)
	}
	if r.ImageEndOffset != 0 {
		fmt.Fprintf(w, "Image end offset: %d\n", r.ImageEndOffset)
	}
}

// writeCheckJSON prints r with qemu-img 7.2's keys in its order (which
// comes from its hash table, not from the schema); counts qemu omits when
// zero are omitted. The safety findings, with --untrusted, come last.
func writeCheckJSON(w io.Writer, r *format.CheckResult, findings []format.Finding, untrusted bool) error {
	var b bytes.Buffer
	b.WriteString("{")
	first := true
	field := func(k string, v any) {
		if !first {
			b.WriteString(",")
		}
		first = false
		kj, _ := json.Marshal(k)
		vj, _ := json.Marshal(v)
		b.Write(kj)
		b.WriteString(":")
		b.Write(vj)
	}
	count := func(k string, v int64) {
		if v != 0 {
			field(k, v)
		}
	}
	count("image-end-offset", r.ImageEndOffset)
	count("compressed-clusters", r.CompressedClusters)
	count("total-clusters", r.TotalClusters)
	count("corruptions", r.Corruptions)
	field("check-errors", r.CheckErrors)
	count("leaks", r.Leaks)
	count("allocated-clusters", r.AllocatedClusters)
	field("filename", r.Filename)
	field("format", r.Format)
	count("fragmented-clusters", r.FragmentedClusters)
	if untrusted {
		if findings == nil {
			findings = []format.Finding{}
		}
		field("safety-findings", findings)
	}
	b.WriteString("}")
	var out bytes.Buffer
	if err := json.Indent(&out, b.Bytes(), "", "    "); err != nil {
		return err
	}
	out.WriteString("\n")
	_, err := w.Write(out.Bytes())
	return err
}

// writeFindings prints the safety findings on their own (when the image
// could not be checked).
func writeFindings(w io.Writer, mode string, findings []format.Finding) {
	if mode == "json" {
		if findings == nil {
			findings = []format.Finding{}
		}
		writeJSON(w, map[string]any{"safety-findings": findings})
		return
	}
	if len(findings) == 0 {
		fmt.Fprintln(w, "No safety findings.")
		return
	}
	fmt.Fprintln(w, "Safety findings:")
	for _, f := range findings {
		fmt.Fprintf(w, "  %s\n", f)
	}
}

// checkUnopenable checks a file Open refused for a malformed structure,
// when its format can check such files (format.Format.CheckFile); nil
// otherwise.
func checkUnopenable(c *cli.Context, path string, openErr error) *format.CheckResult {
	var fe *format.FormatError
	if !errors.As(openErr, &fe) {
		return nil
	}
	f, err := openFile(c, path)
	if err != nil {
		return nil
	}
	defer f.Close()
	ft, err := format.Probe(f)
	if name := c.String(formatFlag.Name); name != "" {
		ft, err = format.Lookup(name)
	}
	if err != nil || ft.CheckFile == nil || ft.Name != fe.Format {
		return nil
	}
	r, err := ft.CheckFile(c.Context, f)
	if err != nil {
		return nil
	}
	r.Format = ft.Name
	return r
}
