package limits

import "github.com/diskimg/diskimg/inspect"

// AddInspection fills in what inspect found inside the image: partition
// table, filesystems and their use, and the operating system.
func AddInspection(img *Image, r *inspect.Report) {
	if r == nil || r.PartitionTable == nil {
		return
	}
	img.Inspected = true
	img.PartitionTable = r.PartitionTable.Type
	addFS := func(fs *inspect.Filesystem) {
		if fs == nil {
			return
		}
		if fs.Encrypted {
			img.Encrypted = true
		}
		img.Filesystems++
		img.FSSize += fs.Size
		img.FSUsed += fs.Used
		img.InodesUsed += fs.InodesUsed
		img.InodesTotal += fs.InodesTotal
	}
	addFS(r.Filesystem)
	for i := range r.PartitionTable.Partitions {
		addFS(r.PartitionTable.Partitions[i].Filesystem)
	}
	if r.OS != nil {
		img.OSType, img.Arch, img.Bits = r.OS.Type, r.OS.Arch, r.OS.Bits
	}
}
