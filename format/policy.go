package format

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Policy says which files an image may pull in besides itself: backing
// files, VMDK extents, differencing parents, external data files.
type Policy struct {
	// AllowOutside lets references leave the image's directory (absolute
	// paths, "..", symlinks pointing elsewhere).
	AllowOutside bool
	// NoBacking opens no backing file: ranges the image does not store read
	// as zeros and are reported Unallocated.
	NoBacking bool
	// Untrusted refuses every reference to another file.
	Untrusted bool
	// Parents are images the user names as parents, opened as given
	// (not relative to the image, wherever they are). A layer that
	// checks its parent's identity (Backing.ID: a differencing VDI,
	// which names its parent only by UUID; a differencing VHDX; a VMDK
	// snapshot) takes the first that has it when its stored names lead
	// to none.
	Parents []string
	// DeferBackingErrors opens an image whose backing file cannot be
	// opened (missing, outside the directory, not the right parent), as
	// qemu-img info does: Info names the backing file, and extent queries
	// and reads that need it fail with the reason (BackingError). For
	// showing metadata; commands that read data leave it off and fail at
	// open.
	DeferBackingErrors bool
}

// Resolve turns ref, a file name stored in the image at imagePath, into a
// path to open, or an error when the policy forbids it. Relative names are
// taken relative to the image's directory, as qemu does.
func (p Policy) Resolve(imagePath, ref string) (string, error) {
	if err := p.checkRef(ref); err != nil {
		return "", err
	}
	dir := filepath.Dir(imagePath)
	path := ref
	if !filepath.IsAbs(ref) {
		path = filepath.Join(dir, ref)
	}
	if p.AllowOutside {
		return path, nil
	}
	if filepath.IsAbs(ref) {
		return "", fmt.Errorf("%q is an absolute path: %w (use --allow-backing-outside to follow it)", ref, ErrOutsideDirectory)
	}
	for _, part := range strings.FieldsFunc(ref, func(r rune) bool { return r == '/' || r == '\\' }) {
		if part == ".." {
			return "", fmt.Errorf("%q contains \"..\": %w (use --allow-backing-outside to follow it)", ref, ErrOutsideDirectory)
		}
	}
	// A symlink inside the directory may still point out of it.
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", err
	}
	realPath, err := filepath.EvalSymlinks(path)
	if err != nil {
		if os.IsNotExist(err) {
			return "", fmt.Errorf("%q: %w", ref, err)
		}
		return "", err
	}
	if rel, err := filepath.Rel(realDir, realPath); err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("%q resolves to %s: %w (use --allow-backing-outside to follow it)", ref, realPath, ErrOutsideDirectory)
	}
	if fi, err := os.Stat(realPath); err == nil && !fi.Mode().IsRegular() {
		return "", fmt.Errorf("%q is not a regular file", ref)
	}
	return path, nil
}

// checkRef applies the rules that hold wherever the image is: a name is
// not empty, holds no NUL and is no protocol, and untrusted mode follows
// none.
func (p Policy) checkRef(ref string) error {
	if ref == "" {
		return fmt.Errorf("empty file reference")
	}
	if strings.ContainsRune(ref, 0) {
		return fmt.Errorf("file reference %q contains a NUL byte", ref)
	}
	if isWindowsAbs(ref) {
		return fmt.Errorf("%q is an absolute Windows path, which names no file on this host: %w", ref, ErrOutsideDirectory)
	}
	if isProtocol(ref) {
		return fmt.Errorf("file reference %q is a protocol or json: name, which diskimg never opens", ref)
	}
	if p.Untrusted {
		return fmt.Errorf("%q: %w (untrusted mode opens no other file)", ref, ErrOutsideDirectory)
	}
	return nil
}

// FullName is how qemu shows a file name an image stores (its
// full-backing-filename): absolute names as they are, relative ones
// joined to the image's directory. It is only a string; whether the file
// may be opened is Resolve's decision.
func FullName(imagePath, ref string) string {
	if filepath.IsAbs(ref) || isWindowsAbs(ref) {
		return ref
	}
	if i := strings.Index(imagePath, "://"); i > 0 && isProtocol(imagePath) {
		// A URL (an object in a bucket): keep "scheme://", which
		// filepath.Join would fold to "scheme:/".
		return imagePath[:i+3] + path.Join(path.Dir(imagePath[i+3:]), ref)
	}
	return filepath.Join(filepath.Dir(imagePath), ref)
}

// LocalName turns a relative Windows path an image stores (.\dir\p.vhdx)
// into this host's form (dir/p.vhdx). Other names come back unchanged:
// an absolute Windows path is the policy's to refuse.
func LocalName(ref string) string {
	if isWindowsAbs(ref) || !strings.Contains(ref, `\`) {
		return ref
	}
	return path.Clean(strings.ReplaceAll(ref, `\`, "/"))
}

// isWindowsAbs reports a name a Windows image stores for a file on its
// host: a drive path (C:\dir\p.vhdx, C:/dir), a UNC or device path
// (\\server\share, \\?\Volume{…}\p.vhdx) or one rooted on the current
// drive (\dir\p.vhdx).
func isWindowsAbs(ref string) bool {
	if len(ref) >= 3 && ref[1] == ':' && (ref[2] == '\\' || ref[2] == '/') {
		c := ref[0] | 0x20
		return c >= 'a' && c <= 'z'
	}
	return strings.HasPrefix(ref, `\`)
}

// isProtocol reports names qemu would treat as a protocol ("nbd://…",
// "json:{…}", "http:…"), which must never be followed.
func isProtocol(ref string) bool {
	if strings.HasPrefix(ref, "json:") {
		return true
	}
	i := strings.IndexByte(ref, ':')
	if i <= 0 {
		return false
	}
	for _, r := range ref[:i] {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}
