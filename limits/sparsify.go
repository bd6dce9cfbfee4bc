package limits

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// sparsified is the image as `convert --sparsify` reads it: the free
// space of its filesystems holds no data.
func sparsified(img Image) Image {
	img.AllocatedSize = max(0, img.AllocatedSize-img.SparsifyFree)
	img.SparsifyFree = 0
	return img
}

// sparsifyOutput marks c as sparsified and, when the format stays the
// same, names its output after what was done ("vm-sparse.qcow2") rather
// than after the cloud.
func sparsifyOutput(img Image, c *Conversion) {
	c.Sparsify = true
	if img.Filename == "" {
		return
	}
	ext := filepath.Ext(c.Output)
	if base := filepath.Base(img.Filename); filepath.Ext(base) == ext {
		c.Output = strings.TrimSuffix(base, ext) + "-sparse" + ext
	}
}

// suggestSparsify adds a finding and the commands for `convert --sparsify`
// when leaving out the free filesystem space takes the upload to a better
// path (normal instead of fast, or accepted instead of refused) or under a
// size limit it only met once compressed.
func suggestSparsify(img Image, p *Profile, req Request, d Decision) Decision {
	if req.Sparsify || img.SparsifyFree <= 0 {
		return d
	}
	req.Sparsify = true
	alt := Plan(img, p, req)
	if !betterPath(p.Import, alt, d) {
		return d
	}
	d.Findings = append(d.Findings, Finding{Rule: p.Name + ".sparsify", Severity: Info,
		Message: fmt.Sprintf("%s of the image's data lies in free filesystem space: converting with --sparsify leaves it out, for an upload of at most %s (%s import): %s",
			size(img.SparsifyFree), size(alt.UploadSize), alt.Path, strings.Join(alt.Commands, " && ")),
		Source: p.Source})
	d.SparsifyCommands = alt.Commands
	return d
}

// betterPath reports whether alt goes where d cannot (d refused), on an
// earlier path of the profile (normal before fast), or on the same path
// without d's warning that only compression makes it fit.
func betterPath(paths []Path, alt, d Decision) bool {
	if alt.Path == Refused {
		return false
	}
	if d.Path == Refused {
		return true
	}
	rank := func(name string) int { return slices.IndexFunc(paths, func(p Path) bool { return p.Name == name }) }
	if a, b := rank(alt.Path), rank(d.Path); a != b {
		return a < b
	}
	onlyCompressed := func(d Decision) bool {
		return slices.ContainsFunc(d.Findings, func(f Finding) bool { return strings.HasSuffix(f.Rule, ".import.compressed-size") })
	}
	return onlyCompressed(d) && !onlyCompressed(alt)
}
