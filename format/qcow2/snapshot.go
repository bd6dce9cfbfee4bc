package qcow2

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/diskimg/diskimg/format"
)

// Header fields of the snapshot table (big-endian).
const (
	offNbSnapshots     = 60 // nb_snapshots (4)
	offSnapshotsOffset = 64 // snapshots_offset (8)
)

// Snapshot table entries (big-endian), each aligned to 8 bytes: a fixed
// part, extra data, the id and the name.
const (
	maxSnapshots      = 65536 // qemu's QCOW_MAX_SNAPSHOTS
	maxSnapshotsSize  = 1024 * maxSnapshots
	maxSnapshotExtra  = 1024 // qemu's QCOW_MAX_SNAPSHOT_EXTRA_DATA
	snapshotHeaderLen = 40   // fixed part of an entry
	snapL1Off         = 0    // l1_table_offset (8)
	snapL1Size        = 8    // l1_size (4)
	snapIDLenOff      = 12   // id_str_size (2)
	snapNameLenOff    = 14   // name_size (2)
	snapDateSec       = 16   // date_sec (4)
	snapDateNsec      = 20   // date_nsec (4)
	snapVMClock       = 24   // vm_clock_nsec (8)
	snapVMState       = 32   // vm_state_size (4)
	snapExtraOff      = 36   // extra_data_size (4)
	extraVMState      = 8    // extra data with vm_state_size_large (8)
	extraICount       = 24   // extra data through disk_size (8) and icount (8)
	noICount          = math.MaxUint64
	snapshotReadAhead = 64 << 10
)

// snapshot is one entry of the snapshot table.
type snapshot struct {
	info     format.Snapshot
	l1Offset uint64
	l1Size   int64
	entryOff int64 // file offset of the entry
}

// tableReader reads a table of unknown length front to back, a window
// at a time.
type tableReader struct {
	f      format.File
	off    int64 // file offset of buf
	buf    []byte
	window int64
}

// at returns n bytes at file offset pos, naming field when the file ends.
func (r *tableReader) at(pos, n int64, field string) ([]byte, error) {
	if pos < r.off || pos+n > r.off+int64(len(r.buf)) {
		size := max(n, min(r.window, r.f.Size()-pos))
		if pos > r.f.Size() || size < n || n > r.f.Size()-pos {
			return nil, errorf(field, pos, "%d bytes past the end of the file (%d bytes)", n, r.f.Size())
		}
		r.buf = make([]byte, size)
		r.off = pos
		if err := format.ReadFull(r.f, r.buf, pos, Name, field); err != nil {
			return nil, err
		}
	}
	return r.buf[pos-r.off : pos-r.off+n], nil
}

// readSnapshots reads the snapshot table as qemu does when it opens an
// image: at most 65536 entries, a cluster-aligned table of at most 64 MiB,
// at most 1 KiB of extra data an entry. The snapshots' L1 tables are
// checked when one is loaded, as qemu does.
func readSnapshots(f format.File, n uint32, off uint64, clusterSize int64) ([]snapshot, error) {
	switch {
	case n > maxSnapshots:
		return nil, errorf("nb_snapshots", offNbSnapshots, "%d snapshots exceed qemu's %d", n, maxSnapshots)
	case off&uint64(clusterSize-1) != 0 || off > math.MaxInt64:
		return nil, errorf("snapshots_offset", offSnapshotsOffset, "%#x is not cluster-aligned", off)
	case n == 0:
		return nil, nil
	}
	be := binary.BigEndian
	r := &tableReader{f: f, window: snapshotReadAhead}
	start := int64(off)
	list := make([]snapshot, 0, min(int64(n), f.Size()/snapshotHeaderLen))
	pos := start
	for i := range int64(n) {
		pos = (pos + 7) &^ 7
		field := fmt.Sprintf("snapshot table entry %d", i)
		h, err := r.at(pos, snapshotHeaderLen, field)
		if err != nil {
			return nil, err
		}
		s := snapshot{entryOff: pos, l1Offset: be.Uint64(h[snapL1Off:]), l1Size: int64(be.Uint32(h[snapL1Size:]))}
		idLen, nameLen := int64(be.Uint16(h[snapIDLenOff:])), int64(be.Uint16(h[snapNameLenOff:]))
		extra := int64(be.Uint32(h[snapExtraOff:]))
		vmClock := be.Uint64(h[snapVMClock:])
		s.info = format.Snapshot{
			DateSec: int64(be.Uint32(h[snapDateSec:])), DateNsec: int64(be.Uint32(h[snapDateNsec:])),
			VMClockSec: int64(vmClock / 1e9), VMClockNsec: int64(vmClock % 1e9),
			VMStateSize: int64(be.Uint32(h[snapVMState:])),
		}
		if extra > maxSnapshotExtra {
			return nil, errorf(field, pos+snapExtraOff, "%d bytes of extra data exceed qemu's %d", extra, maxSnapshotExtra)
		}
		pos += snapshotHeaderLen
		x, err := r.at(pos, extra, field+" extra data")
		if err != nil {
			return nil, err
		}
		if extra >= extraVMState {
			s.info.VMStateSize = int64(be.Uint64(x))
		}
		if extra >= extraICount {
			if c := be.Uint64(x[extraICount-8:]); c != noICount {
				v := int64(c)
				s.info.ICount = &v
			}
		}
		pos += extra
		id, err := r.at(pos, idLen, field+" id")
		if err != nil {
			return nil, err
		}
		pos += idLen
		name, err := r.at(pos, nameLen, field+" name")
		if err != nil {
			return nil, err
		}
		pos += nameLen
		s.info.ID, s.info.Name = cString(id), cString(name)
		if pos-start > maxSnapshotsSize {
			return nil, errorf("snapshots_offset", offSnapshotsOffset, "the snapshot table exceeds qemu's %d bytes at entry %d", maxSnapshotsSize, i)
		}
		list = append(list, s)
	}
	return list, nil
}

// cString is b up to its first NUL, as qemu reads ids and names.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// LoadSnapshot makes the image read the snapshot's L1 table instead of
// the active one, as qemu-img convert -l does (format.SnapshotLoader).
// Where the snapshot's L1 table is shorter than the disk, the disk reads
// as unallocated, as in qemu.
func (img *Image) LoadSnapshot(id, name string) error {
	if id == "" && name == "" {
		return fmt.Errorf("qcow2: no snapshot id or name given")
	}
	var sn *snapshot
	for i := range img.snapshots {
		s := &img.snapshots[i]
		if (id == "" || s.info.ID == id) && (name == "" || s.info.Name == name) {
			sn = s
			break
		}
	}
	if sn == nil {
		return fmt.Errorf("qcow2: %w", &format.SnapshotNotFoundError{ID: id, Name: name})
	}
	field := fmt.Sprintf("snapshot %s l1_table_offset", sn.info.ID)
	at := sn.entryOff + snapL1Off
	switch {
	case sn.l1Size*8 > maxL1Bytes:
		return errorf(field, at, "L1 table of %d entries exceeds qemu's %d bytes", sn.l1Size, maxL1Bytes)
	case sn.l1Offset > math.MaxInt64 || sn.l1Offset&uint64(img.clusterSize-1) != 0:
		return errorf(field, at, "L1 table offset %#x is not cluster-aligned", sn.l1Offset)
	}
	off := int64(sn.l1Offset)
	if err := format.CheckTable(Name, field, off, sn.l1Size*8, img.File.Size()); err != nil {
		return err
	}
	n := min(sn.l1Size, int64(len(img.l1)))
	raw := make([]byte, n*8)
	if err := format.ReadFull(img.File, raw, off, Name, field); err != nil {
		return err
	}
	l1 := make([]uint64, len(img.l1))
	for i := range n {
		l1[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	img.l1, img.l1Offset = l1, off
	return nil
}
