package main

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/format"
)

func infoCommand() *cli.Command {
	return imageCommand("info", "FILE", "show an image's format, sizes, backing file and format details (like qemu-img info)",
		withImage(runInfo), outputFlag, &cli.BoolFlag{Name: "backing-chain", Usage: "show every image of the backing chain"})
}

func runInfo(c *cli.Context, mode, path string, img format.Image) error {
	var reports []*format.Report
	name := path
	for layer := img; layer != nil; layer = layer.Info().Backing {
		r, err := format.NewReport(name, layer)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		reports = append(reports, r)
		if !c.Bool("backing-chain") {
			break
		}
		name = layer.Info().FullBackingFile
	}
	w := c.App.Writer
	if mode == "json" {
		var v any = reports[0]
		if c.Bool("backing-chain") {
			v = reports
		}
		return writeJSON(w, v)
	}
	for i, r := range reports {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := writeInfoText(w, r); err != nil {
			return err
		}
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "    ")
	return enc.Encode(v)
}

// writeInfoText prints a report the way `qemu-img info` does, with
// diskimg's allocated size added.
func writeInfoText(w io.Writer, r *format.Report) error {
	fmt.Fprintf(w, "image: %s\n", r.Filename)
	fmt.Fprintf(w, "file format: %s\n", r.Format)
	fmt.Fprintf(w, "virtual size: %s (%d bytes)\n", humanSize(r.VirtualSize), r.VirtualSize)
	fmt.Fprintf(w, "disk size: %s\n", humanSize(r.ActualSize))
	fmt.Fprintf(w, "allocated size: %s (%d bytes)\n", humanSize(r.AllocatedSize), r.AllocatedSize)
	if r.ClusterSize != 0 {
		fmt.Fprintf(w, "cluster_size: %d\n", r.ClusterSize)
	}
	if r.Encrypted {
		fmt.Fprintln(w, "encrypted: yes")
	}
	if r.DirtyFlag != nil && *r.DirtyFlag {
		fmt.Fprintln(w, "cleanly shut down: no")
	}
	if r.BackingFilename != "" {
		fmt.Fprintf(w, "backing file: %s", r.BackingFilename)
		if r.FullBackingFilename != "" && filepath.Clean(r.FullBackingFilename) != filepath.Clean(r.BackingFilename) {
			fmt.Fprintf(w, " (actual path: %s)", r.FullBackingFilename)
		}
		fmt.Fprintln(w)
	}
	if r.BackingFormat != "" {
		fmt.Fprintf(w, "backing file format: %s\n", r.BackingFormat)
	}
	if len(r.Snapshots) > 0 {
		fmt.Fprintln(w, "Snapshot list:")
		writeSnapshots(w, r.Snapshots)
	}
	if r.FormatSpecific != nil {
		fmt.Fprintln(w, "Format specific information:")
		js, err := json.Marshal(r.FormatSpecific.Data)
		if err != nil {
			return err
		}
		if err := writeTree(w, js, 1); err != nil {
			return err
		}
	}
	return nil
}

// writeSnapshots prints the snapshot table as qemu-img prints it: dates in
// local time, ids and names cut where qemu's buffers cut them (127 and 255
// bytes), the guest clock as hours:minutes:seconds.milliseconds.
func writeSnapshots(w io.Writer, list []format.Snapshot) {
	fmt.Fprintf(w, "%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT")
	cut := func(s string, n int) string { return s[:min(len(s), n)] }
	for _, sn := range list {
		clock := uint64(sn.VMClockSec)*1e9 + uint64(sn.VMClockNsec)
		secs := clock / 1e9
		icount := ""
		if sn.ICount != nil {
			icount = fmt.Sprint(*sn.ICount)
		}
		fmt.Fprintf(w, "%-9s %-16s %8s%20s%13s%11s\n", cut(sn.ID, 127), cut(sn.Name, 255), humanSize(sn.VMStateSize),
			time.Unix(sn.DateSec, 0).Local().Format("2006-01-02 15:04:05"),
			fmt.Sprintf("%02d:%02d:%02d.%03d", int32(secs/3600), int32(secs/60%60), int32(secs%60), int32(clock/1e6%1000)), icount)
	}
}

// humanSize formats n bytes as qemu's size_to_str does: three significant
// digits and a binary unit.
func humanSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n)
	i := 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.3g %s", v, units[i])
}
