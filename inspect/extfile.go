package inspect

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// A minimal read-only ext2/3/4 file reader for OS detection. go-diskfs's
// ext4 reader is not used on guest data: it allocates the whole group
// descriptor table from an unchecked superblock field, which a hostile
// image can make arbitrarily large.

// Inode and extent layout.
const (
	extGDInodeTableLo = 0x08 // u32 in a group descriptor
	extGDInodeTableHi = 0x28 // u32, 64-byte descriptors only
	extInodeMode      = 0x00 // u16
	extInodeSizeLo    = 0x04 // u32
	extInodeFlags     = 0x20 // u32
	extInodeBlock     = 0x28 // 60 bytes: block map, extent root or symlink
	extInodeSizeHi    = 0x6c // u32
	extInodeBlockLen  = 60
	extFlagExtents    = 0x80000
	extFlagInlineData = 0x10000000
	extModeType       = 0xf000
	extModeDir        = 0x4000
	extModeReg        = 0x8000
	extModeLink       = 0xa000
	extExtentMagic    = 0xf30a
	extMaxDepth       = 5
	extDirentMin      = 8
	extMaxSymlinks    = 8
	extNDirBlocks     = 12 // direct block pointers before the indirect ones
)

var errNotFound = errors.New("no such file")

type extFS struct {
	d dev
	s *extSuper
}

type extInode struct {
	num   uint32
	mode  uint16
	size  int64
	flags uint32
	block []byte // i_block, 60 bytes
}

func newExtFS(d dev) (*extFS, error) {
	sb, err := d.read(extSuperOff, extSuperSize)
	if err != nil {
		return nil, err
	}
	if le.Uint16(sb[extMagicOff:]) != extMagic {
		return nil, errors.New("no ext superblock")
	}
	s, _, err := parseExtSuper(sb, d.size)
	if err != nil {
		return nil, err
	}
	return &extFS{d: d, s: s}, nil
}

func (fs *extFS) inode(n uint32) (*extInode, error) {
	if n == 0 || int64(n) > fs.s.inodesCount {
		return nil, fmt.Errorf("inode %d is out of range", n)
	}
	g, idx := int64(n-1)/fs.s.inodesPerGroup, int64(n-1)%fs.s.inodesPerGroup
	gdtBlock := fs.s.firstDataBlock + 1
	gd, err := fs.d.read(gdtBlock*fs.s.blockSize+g*fs.s.descSize, int(fs.s.descSize))
	if err != nil {
		return nil, err
	}
	table := int64(le.Uint32(gd[extGDInodeTableLo:]))
	if fs.s.descSize >= 64 {
		table |= int64(le.Uint32(gd[extGDInodeTableHi:])) << 32
	}
	if table <= 0 || table >= fs.s.blocks {
		return nil, fmt.Errorf("group %d: bg_inode_table %d is outside the filesystem", g, table)
	}
	b, err := fs.d.read(table*fs.s.blockSize+idx*fs.s.inodeSize, int(fs.s.inodeSize))
	if err != nil {
		return nil, err
	}
	return &extInode{
		num:   n,
		mode:  le.Uint16(b[extInodeMode:]),
		size:  int64(le.Uint32(b[extInodeSizeLo:])) | int64(le.Uint32(b[extInodeSizeHi:])&0x7fffffff)<<32,
		flags: le.Uint32(b[extInodeFlags:]),
		block: b[extInodeBlock : extInodeBlock+extInodeBlockLen],
	}, nil
}

// readFile returns up to max bytes from the start of ino's data.
func (fs *extFS) readFile(ino *extInode, max int64) ([]byte, error) {
	n := min(ino.size, max)
	if n < 0 {
		return nil, errors.New("negative file size")
	}
	if ino.flags&extFlagInlineData != 0 || ino.mode&extModeType == extModeLink && ino.flags&extFlagExtents == 0 && ino.size < extInodeBlockLen {
		return append([]byte(nil), ino.block[:min(n, extInodeBlockLen)]...), nil
	}
	bs := fs.s.blockSize
	out := make([]byte, n)
	nblocks := (n + bs - 1) / bs
	for lb := int64(0); lb < nblocks; {
		phys, run, err := fs.mapBlock(ino, lb)
		if err != nil {
			return nil, err
		}
		run = min(run, nblocks-lb)
		if phys > 0 {
			if phys >= fs.s.blocks || run > fs.s.blocks-phys {
				return nil, fmt.Errorf("inode %d: block %d is outside the filesystem", ino.num, phys)
			}
			want := min(run*bs, n-lb*bs)
			b, err := fs.d.read(phys*bs, int(want))
			if err != nil {
				return nil, err
			}
			copy(out[lb*bs:], b)
		}
		lb += run
	}
	return out, nil
}

// mapBlock maps logical block lb of ino to a physical block (0 for a
// hole) and the number of blocks that continue contiguously.
func (fs *extFS) mapBlock(ino *extInode, lb int64) (int64, int64, error) {
	if ino.flags&extFlagExtents != 0 {
		node := ino.block
		for depth := 0; ; depth++ {
			if depth > extMaxDepth || len(node) < 12 || le.Uint16(node) != extExtentMagic {
				return 0, 0, fmt.Errorf("inode %d: bad extent tree node", ino.num)
			}
			entries := int(le.Uint16(node[2:]))
			d := le.Uint16(node[6:])
			if 12+entries*12 > len(node) {
				return 0, 0, fmt.Errorf("inode %d: extent node claims %d entries", ino.num, entries)
			}
			if d == 0 {
				next := int64(-1)
				for i := 0; i < entries; i++ {
					e := node[12+i*12:]
					start, l := int64(le.Uint32(e)), int64(le.Uint16(e[4:]))
					uninit := l > 32768
					if uninit {
						l -= 32768
					}
					if lb >= start && lb < start+l {
						if uninit {
							return 0, start + l - lb, nil
						}
						phys := int64(le.Uint16(e[6:]))<<32 | int64(le.Uint32(e[8:]))
						return phys + lb - start, start + l - lb, nil
					}
					if start > lb && (next < 0 || start < next) {
						next = start
					}
				}
				if next < 0 {
					return 0, 1 << 40, nil
				}
				return 0, next - lb, nil
			}
			var child int64 = -1
			for i := 0; i < entries; i++ {
				e := node[12+i*12:]
				if int64(le.Uint32(e)) <= lb {
					child = int64(le.Uint16(e[8:]))<<32 | int64(le.Uint32(e[4:]))
				}
			}
			if child < 0 {
				return 0, 1, nil
			}
			if child <= 0 || child >= fs.s.blocks {
				return 0, 0, fmt.Errorf("inode %d: extent index points to block %d outside the filesystem", ino.num, child)
			}
			b, err := fs.d.read(child*fs.s.blockSize, int(fs.s.blockSize))
			if err != nil {
				return 0, 0, err
			}
			node = b
		}
	}
	// ext2/3 block map: 12 direct, then single and double indirect.
	per := fs.s.blockSize / 4
	ptr := func(b []byte, i int64) int64 { return int64(le.Uint32(b[i*4:])) }
	indirect := func(blk, i int64) (int64, error) {
		if blk == 0 {
			return 0, nil
		}
		if blk >= fs.s.blocks {
			return 0, fmt.Errorf("inode %d: indirect block %d is outside the filesystem", ino.num, blk)
		}
		b, err := fs.d.read(blk*fs.s.blockSize+i*4, 4)
		if err != nil {
			return 0, err
		}
		return ptr(b, 0), nil
	}
	switch {
	case lb < extNDirBlocks:
		return ptr(ino.block, lb), 1, nil
	case lb < extNDirBlocks+per:
		p, err := indirect(ptr(ino.block, 12), lb-extNDirBlocks)
		return p, 1, err
	case lb < extNDirBlocks+per+per*per:
		i := lb - extNDirBlocks - per
		p, err := indirect(ptr(ino.block, 13), i/per)
		if err != nil {
			return 0, 0, err
		}
		p, err = indirect(p, i%per)
		return p, 1, err
	}
	return 0, 0, fmt.Errorf("inode %d: file too large for this reader", ino.num)
}

// maxDirBytes bounds the directory data read for one lookup.
const maxDirBytes = 8 << 20

// lookup finds name in directory dir; it scans entries linearly, which
// also works for hashed (htree) directories.
func (fs *extFS) lookup(dir *extInode, name string) (uint32, error) {
	if dir.mode&extModeType != extModeDir {
		return 0, errors.New("not a directory")
	}
	data, err := fs.readFile(dir, maxDirBytes)
	if err != nil {
		return 0, err
	}
	var found uint32
	err = fs.dirEntries(data, func(ino uint32, n string) bool {
		if n == name {
			found = ino
			return false
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	if found == 0 {
		return 0, errNotFound
	}
	return found, nil
}

func (fs *extFS) dirEntries(data []byte, fn func(ino uint32, name string) bool) error {
	bs := fs.s.blockSize
	for blk := int64(0); blk*bs < int64(len(data)); blk++ {
		b := data[blk*bs : min((blk+1)*bs, int64(len(data)))]
		for p := 0; p+extDirentMin <= len(b); {
			ino := le.Uint32(b[p:])
			rl := int(le.Uint16(b[p+4:]))
			nl := int(b[p+6])
			if rl < extDirentMin || p+rl > len(b) || extDirentMin+nl > rl {
				break // corrupt block: skip the rest of it
			}
			if ino != 0 && nl > 0 && !fn(ino, string(b[p+8:p+8+nl])) {
				return nil
			}
			p += rl
		}
	}
	return nil
}

// open resolves p from the root, following symlinks inside the
// filesystem (a bounded number of them).
func (fs *extFS) open(p string) (*extInode, error) {
	links := 0
	return fs.resolve(p, true, &links)
}

func (fs *extFS) resolve(p string, follow bool, links *int) (*extInode, error) {
	cur, err := fs.inode(extRootInodeNumber)
	if err != nil {
		return nil, err
	}
	parts := strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/")
	for i := 0; i < len(parts); i++ {
		if parts[i] == "" {
			continue
		}
		dirPath := "/" + strings.Join(parts[:i], "/")
		n, err := fs.lookup(cur, parts[i])
		if err != nil {
			return nil, err
		}
		ino, err := fs.inode(n)
		if err != nil {
			return nil, err
		}
		if ino.mode&extModeType == extModeLink && (follow || i < len(parts)-1) {
			if *links++; *links > extMaxSymlinks {
				return nil, errors.New("too many symbolic links")
			}
			t, err := fs.readFile(ino, 4096)
			if err != nil {
				return nil, err
			}
			target := string(t)
			if !strings.HasPrefix(target, "/") {
				target = path.Join(dirPath, target)
			}
			rest := strings.Join(parts[i+1:], "/")
			return fs.resolve(path.Join(target, rest), follow, links)
		}
		cur = ino
	}
	return cur, nil
}

// readPath reads up to max bytes of the regular file at p.
func (fs *extFS) readPath(p string, max int64) ([]byte, error) {
	ino, err := fs.open(p)
	if err != nil {
		return nil, err
	}
	if ino.mode&extModeType != extModeReg {
		return nil, fmt.Errorf("%s is not a regular file", p)
	}
	return fs.readFile(ino, max)
}

func (fs *extFS) exists(p string) bool {
	_, err := fs.open(p)
	return err == nil
}

// readDir lists the names in directory p (without . and ..).
func (fs *extFS) readDir(p string, max int) ([]string, error) {
	ino, err := fs.open(p)
	if err != nil {
		return nil, err
	}
	if ino.mode&extModeType != extModeDir {
		return nil, errors.New("not a directory")
	}
	data, err := fs.readFile(ino, maxDirBytes)
	if err != nil {
		return nil, err
	}
	var names []string
	fs.dirEntries(data, func(_ uint32, n string) bool {
		if n != "." && n != ".." {
			names = append(names, n)
		}
		return len(names) < max
	})
	return names, nil
}
