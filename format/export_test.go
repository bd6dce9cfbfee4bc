package format

// HostSeeks returns how many runs img's wrapper asked the filesystem
// for, and how many it holds cached.
func HostSeeks(img Image) (seeks, cached int) {
	h, _ := img.(*holesImage)
	if c, ok := img.(holesChecker); ok {
		h = c.holesImage
	}
	if h == nil {
		return 0, 0
	}
	for _, r := range h.files {
		seeks += r.seeks
		cached += len(r.runs)
	}
	return seeks, cached
}

// MaxHostRuns is the cache bound, for tests.
const MaxHostRuns = maxHostRuns

// StaleName matches diskimg's temporary names.
var StaleName = staleName

// SetNoTmpfile turns O_TMPFILE off (or on) and returns the old setting.
func SetNoTmpfile(v bool) bool {
	old := noTmpfile
	noTmpfile = v
	return old
}
