package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/inspect"
)

// sparsifyValue is --sparsify, a flag that also takes =force.
type sparsifyValue struct{ on, force bool }

func (v *sparsifyValue) Set(s string) error {
	switch s {
	case "true":
		*v = sparsifyValue{on: true}
	case "force":
		*v = sparsifyValue{on: true, force: true}
	case "false":
		*v = sparsifyValue{}
	default:
		return fmt.Errorf("%q is not force", s)
	}
	return nil
}

func (v *sparsifyValue) String() string {
	switch {
	case v == nil || !v.on:
		return ""
	case v.force:
		return "force"
	}
	return "true"
}

// IsBoolFlag lets --sparsify stand without a value.
func (v *sparsifyValue) IsBoolFlag() bool { return true }

func sparsifyFlag() cli.Flag {
	return &cli.GenericFlag{Name: "sparsify", Value: &sparsifyValue{},
		Usage: "leave out what the guest's filesystems do not use (it reads as zeros); with `=force`, filesystems marked dirty too"}
}

// sparsifyOptions returns the --sparsify options, nil when it is off.
func sparsifyOptions(c *cli.Context) *inspect.SparsifyOptions {
	v, ok := c.Generic("sparsify").(*sparsifyValue)
	if !ok || !v.on {
		return nil
	}
	return &inspect.SparsifyOptions{Force: v.force}
}

// sparsifySource wraps img so the free space of its filesystems reads as
// zeros, and reports per filesystem what is left out on stderr.
func sparsifySource(c *cli.Context, img format.Image, opts inspect.SparsifyOptions) (format.Image, error) {
	s, rep, err := inspect.Sparsify(img, opts)
	if err != nil {
		return nil, fmt.Errorf("sparsify: %w", err)
	}
	return s, rep.WriteText(c.App.ErrWriter)
}
