package format

import "fmt"

// Snapshot is an internal snapshot of an image, as `qemu-img info` lists
// it, with its JSON keys in qemu-img's order.
type Snapshot struct {
	// ICount is the instruction count when the snapshot was taken; nil
	// when the image does not record one.
	ICount      *int64 `json:"icount,omitempty"`
	VMClockNsec int64  `json:"vm-clock-nsec"` // nanoseconds part of the guest clock
	Name        string `json:"name"`
	DateSec     int64  `json:"date-sec"`
	DateNsec    int64  `json:"date-nsec"`
	VMClockSec  int64  `json:"vm-clock-sec"`
	ID          string `json:"id"`
	VMStateSize int64  `json:"vm-state-size"`
}

// SnapshotLoader is implemented by images whose internal snapshots can be
// read (qcow2).
type SnapshotLoader interface {
	// LoadSnapshot makes the image read as the snapshot with the given id
	// and name instead of its current state, as qemu's
	// bdrv_snapshot_load_tmp: with both set, a snapshot must have both;
	// with one, the first snapshot that has it. The virtual size stays
	// the image's. Call it before reading, from one goroutine.
	LoadSnapshot(id, name string) error
}

// LoadSnapshot makes img read as one of its internal snapshots (see
// SnapshotLoader), through the driver of its top layer, and drops what
// the opener remembered of its extent map.
func LoadSnapshot(img Image, id, name string) error {
	l, ok := TopLayer(img).(SnapshotLoader)
	if !ok {
		return fmt.Errorf("internal snapshots of %s images are not supported", img.Info().Format)
	}
	err := l.LoadSnapshot(id, name)
	if h := holesOf(img); h != nil {
		h.forget()
	}
	return err
}

// SnapshotNotFoundError says that an image has no snapshot with the id
// and name asked for.
type SnapshotNotFoundError struct{ ID, Name string }

func (e *SnapshotNotFoundError) Error() string {
	switch {
	case e.ID != "" && e.Name != "":
		return fmt.Sprintf("no snapshot with id %q and name %q", e.ID, e.Name)
	case e.ID != "":
		return fmt.Sprintf("no snapshot with id %q", e.ID)
	}
	return fmt.Sprintf("no snapshot named %q", e.Name)
}
