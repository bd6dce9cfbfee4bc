package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/diskimg/diskimg/format"
	"github.com/diskimg/diskimg/format/remote"
)

// Flags for images and outputs in object storage (s3://bucket/key) and
// on web servers (https://…).
var (
	endpointFlag  = &cli.StringFlag{Name: "endpoint", Usage: "S3 endpoint `URL` for s3:// names (Huawei OBS, MinIO, any S3-compatible store); default AWS_ENDPOINT_URL, else AWS"}
	pathStyleFlag = &cli.BoolFlag{Name: "s3-path-style", Usage: "address buckets as ENDPOINT/BUCKET/KEY instead of BUCKET.ENDPOINT/KEY"}
	profileFlag   = &cli.StringFlag{Name: "profile", Usage: "shared config `PROFILE` for s3:// credentials (default AWS_PROFILE)"}
)

func remoteFlags() []cli.Flag { return []cli.Flag{endpointFlag, pathStyleFlag, profileFlag} }

// remoteOptions are the object store settings from the flags; a source
// whose server sends no ranges is spooled in spoolDir ("" for $TMPDIR).
func remoteOptions(c *cli.Context, spoolDir string) remote.Options {
	return remote.Options{Endpoint: c.String(endpointFlag.Name), PathStyle: c.Bool(pathStyleFlag.Name), Profile: c.String(profileFlag.Name), SpoolDir: spoolDir}
}

// openFile opens path, a local file or a URL, as a plain file.
func openFile(c *cli.Context, path string) (format.ReadCloserFile, error) {
	if remote.IsURL(path) {
		return remote.Open(c.Context, path, remoteOptions(c, ""))
	}
	return format.OpenFile(path)
}

// sizeOf returns the length of path, a local file or a URL.
func sizeOf(c *cli.Context, path string) (int64, error) {
	if remote.IsURL(path) {
		return remote.Size(c.Context, path, remoteOptions(c, ""))
	}
	f, err := format.OpenFile(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Size(), nil
}

// openPolicy opens path, a local file or a URL, under policy p.
func openPolicy(c *cli.Context, path, fmtName string, p format.Policy) (format.Image, error) {
	if remote.IsURL(path) {
		return openRemoteImage(c, path, fmtName, p, "")
	}
	return format.Open(path, fmtName, p)
}

// openRemoteImage opens the image at the URL path as fmtName ("" probes)
// under policy p; a server that sends no ranges is spooled in spoolDir.
// Its backing files resolve beside it.
func openRemoteImage(c *cli.Context, path, fmtName string, p format.Policy, spoolDir string) (format.Image, error) {
	f, err := remote.Open(c.Context, path, remoteOptions(c, spoolDir))
	if err != nil {
		return nil, err
	}
	img, err := format.NewOpener(p).OpenImage(f, fmtName)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return img, nil
}
