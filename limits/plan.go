package limits

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Path is one way into or out of a cloud.
type Path struct {
	Name string // "normal" or "fast"
	// MaxSize is the largest upload (import) or image (export) the path
	// takes; 0 means no documented limit.
	MaxSize int64
	// Formats the path takes (import) or produces (export): qemu names,
	// optionally "name:subformat".
	Formats []string
	// OnRequest are formats the path also takes, used only when the user
	// asks for them (Huawei's RAW fast import needs a bitmap file diskimg
	// cannot make).
	OnRequest []string
	// Convert is the format:subformat diskimg writes when the image's own
	// format is not taken.
	Convert string
	// RoundTo rounds the virtual size of a converted image up to a
	// multiple (Azure: 1 MiB, GCP: 1 GiB).
	RoundTo int64
	// Package wraps the converted file for upload ("tar.gz" for GCP).
	Package string
}

// Profile is one cloud's rules.
type Profile struct {
	Name   string
	Title  string
	Source string // the document most rules come from
	Import []Path
	Export []Path
	Rules  []Rule
}

// Decision is the plan for one image, request and cloud.
type Decision struct {
	Cloud     string    `json:"cloud"`
	Direction Direction `json:"direction"`
	// Path is "normal", "fast" or "refused".
	Path         string `json:"path"`
	UploadFormat string `json:"upload-format,omitempty"`
	// UploadSize is the size of the file to upload; an upper bound when
	// UploadSizeEstimated (it will be converted first).
	UploadSize          int64     `json:"upload-size"`
	UploadSizeEstimated bool      `json:"upload-size-estimated,omitempty"`
	Findings            []Finding `json:"findings"`
	Commands            []string  `json:"commands"`
	// Conversion is what diskimg converts the image to before upload; nil
	// when the image goes as it is.
	Conversion *Conversion `json:"conversion,omitempty"`
	// SparsifyCommands make the upload with --sparsify, when that takes
	// a better path than Commands (see the ".sparsify" finding).
	SparsifyCommands []string `json:"sparsify-commands,omitempty"`
}

// Conversion describes the conversion that makes the upload.
type Conversion struct {
	Format string `json:"format"`
	// Options are the -o options, "key=value" each.
	Options []string `json:"options,omitempty"`
	// VirtualSize is the converted disk's size, when it grows (rounded up
	// to the whole MiB or GiB the cloud needs); 0 otherwise.
	VirtualSize int64 `json:"virtual-size,omitempty"`
	// Output is the file name to write, in the image's directory.
	Output string `json:"output"`
	// Package is how the output is wrapped for upload ("tar.gz"), "" for
	// none; PackageCommand gives the command.
	Package string `json:"package,omitempty"`
	// Sparsify leaves out the free space of the image's filesystems.
	Sparsify bool `json:"sparsify,omitempty"`
}

// PackageCommand returns the command that wraps a conversion's output,
// written in dir, for upload; "" when none is needed.
func PackageCommand(c *Conversion, dir string) string {
	if c == nil || c.Package != "tar.gz" {
		return ""
	}
	rename := ""
	if c.Output != gcpDiskName {
		// The archive member must be disk.raw whatever the file is called
		// (a disk.raw of the user's may be beside it).
		rename = " " + quote("--transform=s|^"+bre.Replace(c.Output)+"$|"+gcpDiskName+"|")
	}
	return fmt.Sprintf("tar --format=oldgnu -Sczf %s%s -C %s %s", quote(filepath.Join(dir, "image.tar.gz")), rename, quote(dir), quote(c.Output))
}

// gcpDiskName is the name Compute Engine wants inside its tar.gz.
const gcpDiskName = "disk.raw"

// bre escapes a name for a sed basic regular expression (tar's
// --transform); "|" delimits it.
var bre = strings.NewReplacer(`\`, `\\`, ".", `\.`, "[", `\[`, "]", `\]`, "*", `\*`, "^", `\^`, "$", `\$`, "|", `\|`)

// Refused is the Path of a decision that cannot go.
const Refused = "refused"

// Plan decides how the image goes to (or comes from) the cloud: which path,
// in which format, and the diskimg commands that make the upload. The
// findings are those of the file that would be uploaded.
func Plan(img Image, p *Profile, req Request) Decision {
	dir := req.direction()
	d := Decision{Cloud: p.Name, Direction: dir, Path: Refused, Findings: []Finding{}, Commands: []string{}}
	paths := p.Import
	if dir == Export {
		paths = p.Export
	}
	if len(paths) == 0 {
		d.Findings = append(d.Findings, Finding{Rule: p.Name + ".direction", Severity: Error,
			Message: fmt.Sprintf("%s documents no %s path", p.Title, dir), Source: p.Source})
		return d
	}
	if dir == Export {
		return planExport(img, p, req, paths, d)
	}
	if req.Sparsify {
		img = sparsified(img)
	}
	var chosen *Path
	var upload Image
	for i := range paths {
		path := &paths[i]
		// The smallest upload that fits wins; the image as it is wins ties.
		for _, u := range uploadsFor(img, path, req) {
			fits := path.MaxSize == 0 || u.FileSize <= path.MaxSize || compressedFits(u, path)
			if fits && (chosen == nil || u.FileSize < upload.FileSize) {
				chosen, upload = path, u
			}
		}
		if chosen != nil {
			break
		}
	}
	if chosen == nil {
		// Report against the largest path, with the smallest upload diskimg could make.
		last := &paths[len(paths)-1]
		us := uploadsFor(img, last, req)
		if len(us) == 0 {
			d.Findings = append(d.Findings, Finding{Rule: p.Name + ".upload-format", Severity: Error,
				Message: fmt.Sprintf("%s is not an upload format of %s", displayFormat(req.UploadFormat), p.Title), Source: p.Source})
			return d
		}
		u := us[len(us)-1]
		d.UploadFormat, d.UploadSize, d.UploadSizeEstimated = u.Format, u.FileSize, u.FileSize != img.FileSize || u.Format != img.Format
		d.Findings = append(d.Findings, Finding{Rule: p.Name + ".import.size", Severity: Error,
			Message: fmt.Sprintf("the file to upload is %s, more than the %s any import path takes", size(u.FileSize), size(last.MaxSize)), Source: p.Source})
		d.Findings = append(d.Findings, Check(u, p, req)...)
		return suggestSparsify(img, p, req, d)
	}
	d.UploadFormat, d.UploadSize = upload.Format, upload.FileSize
	// A conversion to the image's own format that is smaller than the
	// file (holes under allocated blocks left out) is a conversion too.
	converted := upload.Format != img.Format || upload.Subformat != img.Subformat && upload.Subformat != "" ||
		upload.VirtualSize != img.VirtualSize || upload.FileSize != img.FileSize || img.Backing || chosen.Package != "" || req.Sparsify
	d.UploadSizeEstimated = converted && !exactSize(upload)
	d.Findings = append(d.Findings, Check(upload, p, req)...)
	d.Findings = append(d.Findings, pathFinding(p, chosen, upload, converted))
	if converted {
		d.Conversion = conversionFor(img, p, chosen, upload)
		if req.Sparsify {
			sparsifyOutput(img, d.Conversion)
		}
		d.Commands = convertCommands(img, d.Conversion)
	}
	if chosen.MaxSize > 0 && upload.FileSize > chosen.MaxSize {
		d.Findings = append(d.Findings, Finding{Rule: p.Name + ".import.compressed-size", Severity: Warning,
			Message: fmt.Sprintf("the %s data fits the %s limit only once compressed; the converted file's size decides (diskimg convert --cloud re-checks it)",
				size(upload.AllocatedSize), size(chosen.MaxSize)), Source: p.Source})
	}
	if upload.Format == "raw" && chosen.Name == "fast" && p.Name == "huawei-ims" {
		d.Findings = append(d.Findings, Finding{Rule: "huawei-ims.fast.raw-bitmap", Severity: Warning,
			Message: "fast import of a RAW file needs its bitmap (.mf) file, whose format is not public: make it with Huawei's tool " +
				"(java -jar CreateMF.jar image.raw image.mf), give it the image's base name and upload both to the same bucket",
			Source: p.Source})
		file := img.Filename
		if d.Conversion != nil {
			file = outputPath(img, d.Conversion)
		}
		d.Commands = append(d.Commands, fmt.Sprintf("java -jar CreateMF.jar %s %s", quote(file), quote(strings.TrimSuffix(file, filepath.Ext(file))+".mf")))
	}
	d.Path = chosen.Name
	for _, f := range d.Findings {
		if f.Severity == Error {
			d.Path = Refused
		}
	}
	return suggestSparsify(img, p, req, d)
}

func planExport(img Image, p *Profile, req Request, paths []Path, d Decision) Decision {
	d.UploadSize = img.VirtualSize
	d.Findings = append(d.Findings, Check(img, p, req)...)
	for i := range paths {
		path := &paths[i]
		if path.MaxSize != 0 && img.VirtualSize > path.MaxSize {
			continue
		}
		d.Path = path.Name
		d.UploadFormat = path.Convert
		if path.Name == "fast" {
			d.UploadFormat = "zvhd2"
			if img.Encrypted {
				d.Findings = append(d.Findings, Finding{Rule: "huawei-ims.export.fast-encrypted", Severity: Error,
					Message: "encrypted images cannot be exported through fast export", Source: p.Source})
			}
			local := "qcow2"
			if img.Format != "" && img.Format != "zvhd2" {
				local = img.Format
			}
			d.Commands = append(d.Commands, fmt.Sprintf("diskimg convert -f zvhd2 -O %s exported.zvhd2 exported.%s", local, ext(local)))
		}
		d.Findings = append(d.Findings, Finding{Rule: p.Name + ".export.path", Severity: Info,
			Message: fmt.Sprintf("image of %s: %s export (up to %s) as %s", size(img.VirtualSize), path.Name, size(path.MaxSize), formatList(formatNames(path.Formats))),
			Source:  p.Source})
		break
	}
	if d.Path == Refused {
		last := paths[len(paths)-1]
		d.Findings = append(d.Findings, Finding{Rule: p.Name + ".export.size", Severity: Error,
			Message: fmt.Sprintf("image of %s exceeds the %s export limit", size(img.VirtualSize), size(last.MaxSize)), Source: p.Source})
	}
	for _, f := range d.Findings {
		if f.Severity == Error {
			d.Path = Refused
		}
	}
	return d
}

// compressedFits reports an upload to a compressed format whose guest data
// fits the path before compression, so compression can only help.
func compressedFits(u Image, path *Path) bool {
	return (u.Format == "zvhd2" || u.Format == "zvhd") && u.AllocatedSize <= path.MaxSize
}

// exactSize reports formats whose converted size is known in advance.
func exactSize(u Image) bool {
	return u.Format == "raw" || u.Format == "vpc" && u.Subformat == "fixed"
}

func pathFinding(p *Profile, path *Path, u Image, converted bool) Finding {
	how := "as it is"
	if converted {
		how = "after conversion"
		if !exactSize(u) {
			how += " (size is an upper bound)"
		}
	}
	limit := "no documented size limit"
	if path.MaxSize > 0 {
		limit = "up to " + size(path.MaxSize)
	}
	return Finding{Rule: p.Name + ".import.path", Severity: Info,
		Message: fmt.Sprintf("upload of %s as %s %s: %s import (%s)", size(u.FileSize), describe(u), how, path.Name, limit),
		Source:  p.Source}
}

// uploadsFor returns the images that could be uploaded on path, best
// first: the image itself when the path takes it (and is not to be
// sparsified), then the conversion diskimg would make. The request's
// upload format forces the format.
func uploadsFor(img Image, path *Path, req Request) []Image {
	want := req.UploadFormat
	target := path.Convert
	if want != "" {
		target = matchFormat(append(path.Formats, path.OnRequest...), want)
		if target == "" {
			return nil
		}
	}
	f, sub, _ := strings.Cut(target, ":")
	var out []Image
	// A path that packages its upload (GCP's disk.raw in a tar.gz) always
	// writes the file under the name the package needs.
	selfContained := !img.Backing && !img.DataFile && (path.RoundTo == 0 || img.VirtualSize%path.RoundTo == 0) && path.Package == "" && !req.Sparsify
	if selfContained && (want == "" && accepts(path.Formats, img) || want != "" && img.Format == f && (sub == "" || sub == img.Subformat)) {
		out = append(out, img)
	}
	return append(out, converted(img, f, sub, path.RoundTo))
}

func matchFormat(list []string, want string) string {
	for _, f := range list {
		if name, _, _ := strings.Cut(f, ":"); name == want {
			return f
		}
	}
	return ""
}

func accepts(list []string, img Image) bool {
	for _, f := range list {
		name, sub, _ := strings.Cut(f, ":")
		if name == img.Format && (sub == "" || sub == img.Subformat) {
			return true
		}
	}
	return false
}

func formatNames(list []string) []string {
	out := make([]string, len(list))
	for i, f := range list {
		out[i], _, _ = strings.Cut(f, ":")
	}
	return out
}

// converted describes the image diskimg would write: same guest data,
// the new format, and the writer's measure of the file.
func converted(img Image, f, sub string, roundTo int64) Image {
	u := img
	u.Format, u.Subformat = f, sub
	u.Backing, u.DataFile, u.Encrypted = false, false, false
	u.Filename = ""
	if roundTo > 0 {
		u.VirtualSize = (img.VirtualSize + roundTo - 1) / roundTo * roundTo
	}
	u.FileSize = u.VirtualSize
	if img.Measure != nil {
		if n, err := img.Measure(f, writerOptions(f, sub), u.VirtualSize, img.sparsified); err == nil {
			u.FileSize = n
		}
	}
	return u
}

// writerOptions are the -o options of a conversion to format f, subformat
// sub: a fixed VHD keeps the exact size (force_size), as clouds require.
func writerOptions(f, sub string) []string {
	var opts []string
	if sub != "" {
		opts = append(opts, "subformat="+sub)
	}
	if f == "vpc" && sub == "fixed" {
		opts = append(opts, "force_size=on")
	}
	return opts
}

func ext(f string) string {
	switch f {
	case "vpc":
		return "vhd"
	case "raw":
		return "raw"
	}
	return f
}

// uploadName is the file name of the conversion's output: the image's
// base name with the upload format's extension, or, where that is the
// image's own name (a qcow2 overlay flattened to qcow2, a raw disk
// rounded up for GCP), the base name with "-CLOUD" added. (A GCP package
// names its member disk.raw whatever the file is called.)
func uploadName(img Image, u Image, p *Profile, path *Path) string {
	base := "image"
	if img.Filename != "" && img.Filename != "-" {
		base = strings.TrimSuffix(filepath.Base(img.Filename), filepath.Ext(img.Filename))
	}
	name := base + "." + ext(u.Format)
	if img.Filename != "" && name == filepath.Base(img.Filename) {
		name = strings.TrimSuffix(name, filepath.Ext(name)) + "-" + p.Name + filepath.Ext(name)
	}
	return name
}

// conversionFor describes the conversion to the upload u.
func conversionFor(img Image, p *Profile, path *Path, u Image) *Conversion {
	c := &Conversion{Format: u.Format, Output: uploadName(img, u, p, path), Package: path.Package,
		Options: writerOptions(u.Format, u.Subformat)}
	if u.VirtualSize != img.VirtualSize {
		c.VirtualSize = u.VirtualSize
	}
	return c
}

// outputPath is where the plan's commands write the conversion: next to
// the image.
func outputPath(img Image, c *Conversion) string {
	if dir := filepath.Dir(img.Filename); img.Filename != "" && dir != "." {
		return filepath.Join(dir, c.Output)
	}
	return c.Output
}

// convertCommands are the commands that make the upload, as they run on
// the planned file.
func convertCommands(img Image, c *Conversion) []string {
	src := img.Filename
	if src == "" {
		src = "SRC"
	}
	dst := outputPath(img, c)
	cmd := "diskimg convert"
	for _, f := range img.OpenFlags {
		cmd += " " + quote(f)
	}
	if c.Sparsify {
		cmd += " --sparsify"
	}
	if img.Format != "" {
		cmd += " -f " + img.Format
	}
	cmd += " -O " + c.Format
	if len(c.Options) > 0 {
		cmd += " -o " + strings.Join(c.Options, ",")
	}
	if c.VirtualSize != 0 {
		cmd += fmt.Sprintf(" --resize %d", c.VirtualSize)
	}
	cmds := []string{fmt.Sprintf("%s %s %s", cmd, quote(src), quote(dst))}
	if p := PackageCommand(c, filepath.Dir(dst)); p != "" {
		cmds = append(cmds, p)
	}
	return cmds
}

func quote(s string) string {
	if strings.ContainsAny(s, " \t'\"$\\`!*?[]{}();&|<>") {
		return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	return s
}
