package format

// A new output file has no name in its directory until it is complete and
// synced, so no crash (SIGKILL, the OOM killer, a power cut) can leave a
// partial file behind. On Linux it is created with O_TMPFILE, an inode
// without a name, and linked to its final name at commit. Replacing a file
// (--force) links it to a hidden name first and renames that over the
// final name: the old file stays whole until the new one is. A filesystem
// without O_TMPFILE gets a hidden temporary name from the start; the
// writer holds an advisory lock on it, and a file of that naming whose
// lock can be taken belongs to a writer that is gone: the next run writing
// into the directory removes it, as it does a hidden name left between
// link and rename.

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// tempMarker is in every temporary name diskimg gives: ".NAME.diskimg-HEX".
const tempMarker = ".diskimg-"

// staleName matches diskimg's temporary names: 12 hex digits.
var staleName = regexp.MustCompile(`^\..*\.diskimg-[0-9a-f]{12}$`)

// noTmpfile turns O_TMPFILE off, for tests of the named fallback.
var noTmpfile = false

// PendingFile is an output file that is not yet under its final name.
type PendingFile struct {
	// File is the open file, named as the user named the output, for
	// messages.
	File  *os.File
	dir   string
	final string
	shown string // the path the user gave
	tmp   string // the fallback's temporary name; "" with O_TMPFILE
}

// hiddenName returns a fresh temporary name for base in dir.
func hiddenName(dir, base string) string {
	var rnd [6]byte
	rand.Read(rnd[:])
	return filepath.Join(dir, "."+base+tempMarker+hex.EncodeToString(rnd[:]))
}

// CreatePending creates the file that becomes final on Commit, opened
// read-write with the extra open flags flag. shown is the path the user
// gave, which messages name.
func CreatePending(final, shown string, flag int) (*PendingFile, error) {
	dir, base := filepath.Split(final)
	if dir == "" {
		dir = "."
	}
	removeStale(dir)
	p := &PendingFile{dir: dir, final: final, shown: shown}
	if !noTmpfile {
		fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC|flag, 0o666)
		switch {
		case err == nil && procFD(fd):
			// Locked for the moment it has a hidden name (with --force).
			if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
				unix.Close(fd)
				return nil, fmt.Errorf("creating output %s: locking: %w", shown, err)
			}
			p.File = os.NewFile(uintptr(fd), shown)
			return p, nil
		case err == nil:
			unix.Close(fd) // no /proc to link it by: use a name
		case !noTmpfileSupport(err):
			return nil, fmt.Errorf("creating output %s: %w", shown, err)
		}
	}
	for range 100 {
		tmp := hiddenName(dir, base)
		fd, err := unix.Open(tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC|flag, 0o666)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("creating output %s: %w", shown, err)
		}
		// Another run's clean-up may take the lock first and remove the
		// file: then take another name.
		if unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) != nil || !sameFile(fd, tmp) {
			unix.Close(fd)
			continue
		}
		p.File, p.tmp = os.NewFile(uintptr(fd), shown), tmp
		return p, nil
	}
	return nil, fmt.Errorf("creating output %s: no free temporary name in %s", shown, dir)
}

// noTmpfileSupport reports whether err, from an open with O_TMPFILE,
// says the kernel or the filesystem has no O_TMPFILE.
func noTmpfileSupport(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL)
}

// procFD reports whether the file open as fd can be reached through
// /proc/self/fd, as linking an O_TMPFILE needs.
func procFD(fd int) bool {
	var st unix.Stat_t
	return unix.Stat(fdPath(fd), &st) == nil
}

func fdPath(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

// sameFile reports whether name is the file open as fd.
func sameFile(fd int, name string) bool {
	var a, b unix.Stat_t
	if unix.Fstat(fd, &a) != nil || unix.Lstat(name, &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// Path is a name the file can be opened by while pending.
func (p *PendingFile) Path() string {
	if p.tmp != "" {
		return p.tmp
	}
	return fdPath(int(p.File.Fd()))
}

// Commit gives the synced file its final name, replacing a file there only
// when force is set, then syncs the directory unless noFlush. The file
// stays open.
func (p *PendingFile) Commit(force, noFlush bool) error {
	var err error
	switch {
	case p.tmp != "":
		err = p.commitNamed(force)
	case force:
		err = p.commitReplace()
	default:
		err = unix.Linkat(unix.AT_FDCWD, p.Path(), unix.AT_FDCWD, p.final, unix.AT_SYMLINK_FOLLOW)
		if errors.Is(err, unix.EEXIST) {
			return p.taken()
		}
		if err != nil {
			err = fmt.Errorf("naming the output %s: %w", p.shown, err)
		}
	}
	if err != nil {
		return err
	}
	if !noFlush {
		syncDir(p.dir)
	}
	return nil
}

// taken is the error of a commit whose final name another process took
// while the output was written.
func (p *PendingFile) taken() error {
	return fmt.Errorf("%s was created by someone else during the conversion; output discarded", p.shown)
}

// commitReplace links the O_TMPFILE to a hidden name and renames that over
// the final name.
func (p *PendingFile) commitReplace() error {
	for range 100 {
		tmp := hiddenName(p.dir, filepath.Base(p.final))
		err := unix.Linkat(unix.AT_FDCWD, p.Path(), unix.AT_FDCWD, tmp, unix.AT_SYMLINK_FOLLOW)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return fmt.Errorf("naming the output %s: %w", p.shown, err)
		}
		if err := os.Rename(tmp, p.final); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("replacing %s: %w", p.shown, ErrnoOf(err))
		}
		return nil
	}
	return fmt.Errorf("naming the output %s: no free temporary name in %s", p.shown, p.dir)
}

// commitNamed moves the fallback's temporary file to the final name: a
// rename with force, else a link that fails if the name was taken
// meanwhile.
func (p *PendingFile) commitNamed(force bool) error {
	if force {
		if err := os.Rename(p.tmp, p.final); err != nil {
			return fmt.Errorf("replacing %s: %w", p.shown, ErrnoOf(err))
		}
		p.tmp = ""
		return nil
	}
	err := os.Link(p.tmp, p.final)
	switch {
	case errors.Is(err, os.ErrExist):
		return p.taken()
	case err != nil:
		// Filesystems without hard links: check, then rename.
		if _, lerr := os.Lstat(p.final); lerr == nil {
			return fmt.Errorf("%s already exists (use --force to overwrite it)", p.shown)
		}
		if err := os.Rename(p.tmp, p.final); err != nil {
			return fmt.Errorf("naming the output %s: %w", p.shown, ErrnoOf(err))
		}
	default:
		if err := os.Remove(p.tmp); err != nil {
			return fmt.Errorf("naming the output %s: %w", p.shown, ErrnoOf(err))
		}
	}
	p.tmp = ""
	return nil
}

// Discard removes the fallback's temporary name, if any; the file itself
// goes when it is closed.
func (p *PendingFile) Discard() error {
	if p.tmp == "" {
		return nil
	}
	err := os.Remove(p.tmp)
	p.tmp = ""
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// ErrnoOf strips an *os.PathError or *os.LinkError down to its errno, so
// a message names the user's path rather than a temporary one.
func ErrnoOf(err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}

// removeStale removes the temporary files of diskimg runs that are gone
// from dir: files of diskimg's temporary naming whose lock can be taken.
// It is best effort; a directory that cannot be read is left alone.
func removeStale(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	for _, n := range names {
		if !strings.Contains(n, tempMarker) || !staleName.MatchString(n) {
			continue
		}
		removeIfStale(filepath.Join(dir, n))
	}
}

// removeIfStale removes name when no writer holds its lock.
func removeIfStale(name string) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return
	}
	if unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) != nil {
		return // its writer is alive
	}
	if sameFile(fd, name) {
		unix.Unlink(name)
	}
}

// AnonymousFile returns a read-write file in dir ("" for the system's
// temporary directory) that has no name: O_TMPFILE where the filesystem
// has it, else a temporary name removed at once (locked in between, so a
// crash there leaves a file the next run removes). stem names it in
// /proc and in the fallback's temporary name.
func AnonymousFile(dir, stem string) (*os.File, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	if !noTmpfile {
		fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
		if err == nil {
			return os.NewFile(uintptr(fd), stem), nil
		}
		if !noTmpfileSupport(err) {
			return nil, err
		}
	}
	p, err := CreatePending(filepath.Join(dir, stem), stem, 0)
	if err != nil {
		return nil, err
	}
	if err := p.Discard(); err != nil {
		p.File.Close()
		return nil, err
	}
	return p.File, nil
}

// syncDir flushes dir's entries, so a name just given survives a crash.
// It is best effort: some filesystems cannot sync a directory.
func syncDir(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	defer d.Close()
	d.Sync()
}
