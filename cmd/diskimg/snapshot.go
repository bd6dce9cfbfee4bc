package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/format"
)

// snapshotFlag is qemu-img's -l: read an internal snapshot instead of the
// image's current state.
var snapshotFlag = &cli.StringFlag{Name: "l", Usage: "read the internal snapshot `SNAPSHOT` (snapshot.id=ID,snapshot.name=NAME, or an id or name) instead of the current state"}

// snapshotSelector is the id and name -l asks for; bare is set for the
// bare form, an id or else a name.
type snapshotSelector struct {
	id, name string
	bare     bool
}

// parseSnapshot reads -l as qemu-img does: "snapshot.id=…,snapshot.name=…"
// (qemu's option syntax: a comma in a value doubled, a bare key "on"), or
// a bare id or name.
func parseSnapshot(arg string) (snapshotSelector, error) {
	if !strings.HasPrefix(arg, "snapshot.") {
		return snapshotSelector{id: arg, bare: true}, nil
	}
	opts, err := format.ParseOptions(arg)
	if err != nil {
		return snapshotSelector{}, fmt.Errorf("-l: %w", err)
	}
	var sel snapshotSelector
	for key, value := range opts {
		switch key {
		case "snapshot.id":
			sel.id = value
		case "snapshot.name":
			sel.name = value
		default:
			return sel, fmt.Errorf("-l: invalid parameter %q (snapshot.id or snapshot.name)", key)
		}
	}
	if sel.id == "" && sel.name == "" {
		return sel, errors.New("-l: give snapshot.id or snapshot.name")
	}
	return sel, nil
}

// loadSnapshot makes img read the internal snapshot -l names, when it
// names one. The bare form is an id, else a name, as qemu-img takes it.
func loadSnapshot(c *cli.Context, img format.Image) error {
	arg := c.String(snapshotFlag.Name)
	if arg == "" {
		return nil
	}
	sel, err := parseSnapshot(arg)
	if err != nil {
		return err
	}
	if _, ok := format.TopLayer(img).(format.SnapshotLoader); !ok {
		return fmt.Errorf("-l: internal snapshots of %s images are not supported", img.Info().Format)
	}
	err = format.LoadSnapshot(img, sel.id, sel.name)
	var nf *format.SnapshotNotFoundError
	if sel.bare && errors.As(err, &nf) {
		err = format.LoadSnapshot(img, "", sel.id)
		if errors.As(err, &nf) {
			err = fmt.Errorf("%s: no snapshot with id or name %q", img.Info().Format, sel.id)
		}
	}
	if err != nil {
		return fmt.Errorf("-l: loading the snapshot: %w", err)
	}
	return nil
}
