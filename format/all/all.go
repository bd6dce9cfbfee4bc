// Package all registers every format diskimg reads, and those it
// recognises only to refuse by name, in probe order; import it for its
// side effect.
package all

import (
	_ "github.com/diskimg/diskimg/format/parallels"
	_ "github.com/diskimg/diskimg/format/qcow"
	_ "github.com/diskimg/diskimg/format/qcow2"
	_ "github.com/diskimg/diskimg/format/qed"
	_ "github.com/diskimg/diskimg/format/raw"
	_ "github.com/diskimg/diskimg/format/unsupported"
	_ "github.com/diskimg/diskimg/format/vdi"
	_ "github.com/diskimg/diskimg/format/vhd"
	_ "github.com/diskimg/diskimg/format/vhdx"
	_ "github.com/diskimg/diskimg/format/vmdk"
	_ "github.com/diskimg/diskimg/format/zvhd"
	_ "github.com/diskimg/diskimg/format/zvhd2"
)
