package inspect

import (
	"errors"
	"fmt"
	"strings"
)

// NTFS free space: the clusters $Bitmap marks free. The volume is clean
// when $Volume's dirty flag is clear, $LogFile's restart area says the
// volume is clean, and Windows is not hibernated.

const (
	ntfsRecLogFile   = 2
	ntfsAttrVolInfo  = 0x70
	ntfsVolInfoFlags = 10 // u16 in $VOLUME_INFORMATION
	ntfsVolDirty     = 0x0001
	ntfsMFTMirrLCN   = 0x38 // u64 in the boot sector
	ntfsBootBytes    = 8192 // $Boot
	ntfsSysRecords   = 16   // records the $MFT's first run always holds
	ntfsMirrRecords  = 4

	// $LogFile restart page and restart area.
	ntfsRstrMagic    = "RSTR"
	ntfsChkdMagic    = "CHKD" // chkdsk rewrote the log
	ntfsRstrPageSize = 0x10   // u32 system page size
	ntfsRstrAreaOff  = 0x18   // u16
	ntfsRaLSN        = 0x00   // u64 current LSN
	ntfsRaInUse      = 0x0c   // u16 first client in use
	ntfsRaFlags      = 0x0e   // u16
	ntfsRaLen        = 0x10
	ntfsRaClean      = 0x0002
	ntfsNoClient     = 0xffff
	ntfsHiberfil     = "hiberfil.sys"
	ntfsLogEmpty     = 8192 // both restart pages all 0xff: a reset log
)

func ntfsFree(d dev, force bool, l *freeList) error {
	bs, err := d.read(0, 512)
	if err != nil {
		return err
	}
	v, err := parseNTFSBoot(d, bs)
	if err != nil {
		return err
	}
	if !force {
		if err := v.checkClean(); err != nil {
			return err
		}
	}
	a, err := v.attr(ntfsRecBitmap, ntfsAttrData)
	if err != nil {
		return fmt.Errorf("$Bitmap: %w", err)
	}
	need := (v.clusters + 7) / 8
	if a[ntfsAttrNonRes] != 0 && (len(a) < ntfsAttrNonResLen || int64(le.Uint64(a[ntfsAttrInitSize:])) < need) {
		return errors.New("$Bitmap is not initialised over the whole volume")
	}
	s, err := v.stream(ntfsRecBitmap, ntfsAttrData, "")
	if err != nil {
		return fmt.Errorf("$Bitmap: %w", err)
	}
	for _, r := range s.runs {
		if r.lcn < 0 {
			return errors.New("$Bitmap is sparse")
		}
	}
	if s.size < need {
		return fmt.Errorf("$Bitmap of %d bytes is shorter than %d", s.size, need)
	}
	l.window = min(l.window, v.size)
	for pos := int64(0); pos < need; pos += fatChunk {
		b, err := s.readAt(pos, int(min(fatChunk, need-pos)))
		if err != nil {
			return fmt.Errorf("$Bitmap: %w", err)
		}
		base := pos * 8
		_, err = bitmapRuns(b, v.clusters-base, func(from, to int64) error {
			return l.add((base+from)*v.cs, (base+to)*v.cs)
		})
		if err != nil {
			return err
		}
	}
	mirr := int64(le.Uint64(bs[ntfsMFTMirrLCN:]) % uint64(v.clusters))
	l.protect([]span{{end: max(ntfsBootBytes, v.cs)},
		{start: v.mftOff, end: v.mftOff + ntfsSysRecords*v.recSize},
		{start: mirr * v.cs, end: mirr*v.cs + ntfsMirrRecords*v.recSize}})
	return nil
}

// checkClean returns a dirtyError unless the volume was shut down cleanly.
func (v *ntfsVol) checkClean() error {
	a, err := v.attr(ntfsRecVolume, ntfsAttrVolInfo)
	if err != nil {
		return fmt.Errorf("$Volume: %w", err)
	}
	info, ok := a.resident()
	if !ok || len(info) < ntfsVolInfoFlags+2 {
		return errors.New("$Volume: $VOLUME_INFORMATION is invalid")
	}
	if le.Uint16(info[ntfsVolInfoFlags:])&ntfsVolDirty != 0 {
		return dirty("the volume's dirty flag is set")
	}
	if err := v.checkLogFile(); err != nil {
		return err
	}
	if err := v.loadMFT(); err != nil {
		return err
	}
	h, err := v.file(ntfsHiberfil)
	switch {
	case errors.Is(err, errNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("%s: %w", ntfsHiberfil, err)
	case h.size < 4:
		return nil
	}
	b, err := h.readAt(0, 4)
	if err != nil {
		return err
	}
	if strings.EqualFold(string(b), "hibr") {
		return dirty("Windows is hibernated (%s); shut it down fully", ntfsHiberfil)
	}
	return nil
}

// checkLogFile reads $LogFile's restart areas: the newest must say the
// volume is clean. A log that was reset (all 0xff) is clean.
func (v *ntfsVol) checkLogFile() error {
	s, err := v.stream(ntfsRecLogFile, ntfsAttrData, "")
	if err != nil {
		return fmt.Errorf("$LogFile: %w", err)
	}
	head, err := s.readAt(0, int(min(s.size, ntfsLogEmpty)))
	if err != nil {
		return fmt.Errorf("$LogFile: %w", err)
	}
	switch {
	case len(head) == ntfsLogEmpty && strings.Count(string(head), "\xff") == ntfsLogEmpty:
		return nil
	case string(head[:4]) == ntfsChkdMagic:
		return dirty("chkdsk rewrote $LogFile")
	case string(head[:4]) != ntfsRstrMagic || len(head) < ntfsRstrAreaOff+2:
		return errors.New("$LogFile has no restart page")
	}
	ps := int64(le.Uint32(head[ntfsRstrPageSize:]))
	if ps < ntfsSectorStride || ps > ntfsMaxRecordSize || ps&(ps-1) != 0 || 2*ps > s.size {
		return fmt.Errorf("$LogFile restart page size %d is invalid", ps)
	}
	var best []byte
	for _, off := range []int64{0, ps} {
		p, err := s.readAt(off, int(ps))
		if err != nil {
			return fmt.Errorf("$LogFile: %w", err)
		}
		if string(p[:4]) != ntfsRstrMagic || ntfsFixup(p) != nil {
			continue
		}
		ra := int64(le.Uint16(p[ntfsRstrAreaOff:]))
		if ra+ntfsRaLen > ps {
			continue
		}
		if area := p[ra:]; best == nil || le.Uint64(area[ntfsRaLSN:]) > le.Uint64(best[ntfsRaLSN:]) {
			best = area
		}
	}
	if best == nil {
		return errors.New("$LogFile has no valid restart area")
	}
	if le.Uint16(best[ntfsRaInUse:]) != ntfsNoClient && le.Uint16(best[ntfsRaFlags:])&ntfsRaClean == 0 {
		return dirty("$LogFile says the volume was not cleanly unmounted")
	}
	return nil
}
