package vhdx

import (
	"testing"

	"github.com/diskimg/diskimg/format/formattest"
)

// variants are the qemu-img creation options VHDX images are checked in.
var variants = []formattest.Variant{
	{Name: "dynamic", Args: []string{"-o", "subformat=dynamic"}},
	{Name: "dynamic-1M", Args: []string{"-o", "subformat=dynamic,block_size=1M"}},
	{Name: "dynamic-32M", Args: []string{"-o", "subformat=dynamic,block_size=32M"}},
	{Name: "dynamic-256M", Args: []string{"-o", "subformat=dynamic,block_size=256M"}},
	{Name: "dynamic-nozero", Args: []string{"-o", "subformat=dynamic,block_state_zero=off"}},
	{Name: "dynamic-log1M", Args: []string{"-o", "subformat=dynamic,log_size=1M,block_size=8M"}},
	{Name: "fixed", Args: []string{"-o", "subformat=fixed"}},
	{Name: "fixed-nozero-1M", Args: []string{"-o", "subformat=fixed,block_state_zero=off,block_size=1M"}},
}

func TestConformance(t *testing.T) {
	formattest.Run(t, Name, variants, formattest.Options{QemuMapsAllData: true})
}

func TestEmptyHuge(t *testing.T) {
	huge := append(formattest.Pick(variants, "dynamic", "dynamic-nozero", "dynamic-1M", "dynamic-256M", "fixed"),
		formattest.Variant{Name: "fixed-nozero", Args: []string{"-o", "subformat=fixed,block_state_zero=off"}})
	formattest.RunEmptyHuge(t, Name, "2T", huge, formattest.Options{QemuMapsAllData: true})
}
