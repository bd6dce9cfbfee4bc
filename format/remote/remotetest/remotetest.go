// Package remotetest runs a real S3-compatible server for tests and
// benchmarks: SeaweedFS's `weed server -s3` on 127.0.0.1, built once by
// .ci/setup-seaweedfs into the user's cache.
package remotetest

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/diskimg/diskimg/format/remote"
)

// WeedVersion is the SeaweedFS module version .ci/setup-seaweedfs builds
// (keep the two equal).
const WeedVersion = "v0.0.0-20261109003541-7506e5f91cd6"

// Bucket exists once the server is ready. Tests share it (under keys of
// their own): each new bucket costs the server seconds to set up.
const Bucket = "diskimg"

// Credentials the server accepts.
const (
	AccessKey = "diskimg-test-key"
	SecretKey = "diskimg-test-secret-0123456789"
)

// WeedBinary returns the path of the weed binary: $DISKIMG_WEED, or where
// .ci/setup-seaweedfs puts it; "" when there is none.
func WeedBinary() string {
	if p := os.Getenv("DISKIMG_WEED"); p != "" {
		return p
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return ""
		}
		cache = filepath.Join(home, ".cache")
	}
	p := filepath.Join(cache, "diskimg", "weed-"+WeedVersion)
	if fi, err := os.Stat(p); err != nil || fi.IsDir() {
		return ""
	}
	return p
}

// Server is a running SeaweedFS with an S3 gateway.
type Server struct {
	// Endpoint is the S3 endpoint, http://127.0.0.1:PORT.
	Endpoint string
	cmd      *exec.Cmd
	log      string
	exited   chan error
	ports    []int
}

// Options returns remote options that reach the server (the credentials
// go in the environment: see Env).
func (s *Server) Options() remote.Options {
	return remote.Options{Endpoint: s.Endpoint, PathStyle: true, Region: "us-east-1"}
}

// Env is the environment a client needs for the server's credentials.
func (s *Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + AccessKey, "AWS_SECRET_ACCESS_KEY=" + SecretKey, "AWS_REGION=us-east-1"}
}

// Start starts weed with its data in dir and waits until it stores
// objects. The caller stops it with Close.
func Start(weed, dir string) (*Server, error) {
	ports, err := freePorts(8)
	if err != nil {
		return nil, err
	}
	cfg := map[string]any{"identities": []any{map[string]any{
		"name":        "diskimg",
		"credentials": []any{map[string]string{"accessKey": AccessKey, "secretKey": SecretKey}},
		"actions":     []string{"Admin", "Read", "Write", "List", "Tagging"},
	}}}
	data, _ := json.Marshal(cfg)
	s3cfg := filepath.Join(dir, "s3.json")
	if err := os.WriteFile(s3cfg, data, 0o600); err != nil {
		return nil, err
	}
	p := func(i int) string { return strconv.Itoa(ports[i]) }
	args := []string{"server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-dir=" + dir,
		"-master.port=" + p(0), "-master.port.grpc=" + p(1), "-master.volumeSizeLimitMB=512",
		"-volume.port=" + p(2), "-volume.port.grpc=" + p(3), "-volume.max=0", "-volume.preStopSeconds=0",
		"-filer", "-filer.port=" + p(4), "-filer.port.grpc=" + p(5), "-filer.localSocket=" + filepath.Join(dir, "filer.sock"),
		"-s3", "-s3.port=" + p(6), "-s3.port.grpc=" + p(7), "-s3.config=" + s3cfg,
		"-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.localSocket=" + filepath.Join(dir, "s3.sock")}
	logPath := filepath.Join(dir, "weed.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(weed, args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &Server{Endpoint: "http://127.0.0.1:" + p(6), cmd: cmd, log: logPath, exited: make(chan error, 1), ports: ports}
	go func() { s.exited <- cmd.Wait() }()
	if err := s.waitReady(2 * time.Minute); err != nil {
		s.Close()
		return nil, fmt.Errorf("SeaweedFS did not start: %w\n%s", err, s.LogTail())
	}
	return s, nil
}

// waitReady stores a small object until the server takes it (the volume
// server registers with the master a few seconds after start).
func (s *Server) waitReady(limit time.Duration) error {
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		if os.Getenv(k) != v {
			return fmt.Errorf("the environment lacks %s (call t.Setenv with Server.Env, or set it)", k)
		}
	}
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		select {
		case err := <-s.exited:
			return fmt.Errorf("weed exited: %v", err)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		last = Put(ctx, s.Options(), "s3://"+Bucket+"/ready", []byte("ok"))
		cancel()
		if last == nil {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("not ready after %s: %v", limit, last)
}

// Prefix returns a key prefix in Bucket of t's own: s3://BUCKET/NAME-N/,
// unique in the server's life, so repeated runs do not collide.
func Prefix(t interface{ Name() string }) string {
	name := strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
	return fmt.Sprintf("s3://%s/%s-%d/", Bucket, name, time.Now().UnixNano())
}

// Put stores data as the object name.
func Put(ctx context.Context, o remote.Options, name string, data []byte) error {
	u, err := remote.Create(ctx, name, o, int64(len(data)), true)
	if err != nil {
		return err
	}
	if _, err := u.Write(data); err != nil {
		u.Abort()
		return err
	}
	_, err = u.Commit()
	return err
}

// LogTail returns the end of the server's log, for failure messages.
func (s *Server) LogTail() string {
	data, _ := os.ReadFile(s.log)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// Close stops the server and its children at once: its data is
// thrown away.
func (s *Server) Close() {
	if s.cmd.Process == nil {
		return
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	s.cmd.Process = nil
	// weed puts its gRPC sockets in /tmp, named by port.
	for _, p := range s.ports {
		for _, svc := range []string{"master", "volume", "filer", "s3"} {
			os.Remove(fmt.Sprintf("/tmp/seaweedfs-%s-grpc-%d.sock", svc, p))
		}
	}
}

// TB is the part of testing.TB that Shared uses (this package is also
// used outside tests, by the benchmark).
type TB interface {
	Helper()
	Fatal(args ...any)
	Skip(args ...any)
}

var shared struct {
	once sync.Once
	srv  *Server
	dir  string
	err  error
}

// Shared returns the server every test of this test binary shares,
// started on first use (it takes seconds); TestMain stops it with
// StopShared. It puts the server's credentials in the process
// environment, and clears the variables that would point a client
// elsewhere. Without the weed binary it skips, or fails under CI=true
// (make test builds it: .ci/setup-seaweedfs).
func Shared(t TB) *Server {
	t.Helper()
	if short() {
		t.Skip("-short starts no S3 server (it boots in about 10 s)")
	}
	weed := WeedBinary()
	if weed == "" {
		msg := "SeaweedFS not built: run .ci/setup-seaweedfs (make setup) or set DISKIMG_WEED"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	shared.once.Do(func() { startShared(weed) })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.srv
}

// startShared starts the shared server (once: shared.once).
func startShared(weed string) {
	for _, k := range []string{"AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"} {
		os.Unsetenv(k)
	}
	if shared.dir, shared.err = os.MkdirTemp("", "diskimg-weed-"); shared.err != nil {
		return
	}
	os.Setenv("AWS_CONFIG_FILE", filepath.Join(shared.dir, "none"))
	os.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(shared.dir, "none"))
	for _, kv := range (&Server{}).Env() {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	shared.srv, shared.err = Start(weed, shared.dir)
}

// Run runs m's tests and then stops the shared server: the TestMain of
// a package whose tests call Shared is os.Exit(remotetest.Run(m)). The
// server boots (about 10 s) in the background while the package's other
// tests run, and Shared waits for it; under -short it does not start.
func Run(m interface{ Run() int }) int {
	if !flag.Parsed() {
		flag.Parse()
	}
	if weed := WeedBinary(); weed != "" && !short() {
		go shared.once.Do(func() { startShared(weed) })
	}
	defer StopShared()
	return m.Run()
}

// short reports go test's -short, read from its flag: this package is
// also built into the benchmark, so it does not import testing.
func short() bool {
	f := flag.Lookup("test.short")
	return f != nil && f.Value.String() == "true"
}

// StopShared stops the shared server, if one was started, and removes
// its data.
func StopShared() {
	if shared.srv != nil {
		shared.srv.Close()
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
}

// freePorts returns n distinct ports that are free on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	if len(ports) != n {
		return nil, errors.New("no free ports")
	}
	return ports, nil
}
