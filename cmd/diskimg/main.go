// Command diskimg inspects, converts and checks virtual disk images.
//
// Exit codes: 0 success; 1 error (bad input, I/O, refused option); other
// codes are command-specific and documented in each command's help and in
// README.md (compare: 1 different, 2 error; check: qemu-img's codes; plan:
// 3 refused); convert interrupted by SIGINT or SIGTERM: 130 or 143.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	_ "github.com/diskimg/diskimg/format/all"
)

// exitError carries a command-specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func asExit(err error, target **exitError) bool { return errors.As(err, target) }

func main() {
	if os.Getenv("GOGC") == "" {
		// Go's first collection comes at 4 MiB of heap, which opening
		// a 1 TiB image's block table alone reaches: about 2 ms of a
		// 15 ms conversion. The converter's buffers are reused, so a
		// later first collection does not raise its peak much (41 MiB
		// against 22 MiB at most, compressed qcow2 of dense data).
		debug.SetGCPercent(300)
	}
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// buildVersion is set by the Makefile (-ldflags -X) from git describe.
var buildVersion string

// version is the Makefile's version stamp, else the module version of a
// released build, else the VCS revision Go recorded.
func version() string {
	if buildVersion != "" {
		return buildVersion
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}

// run executes the command line args and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	app := &cli.App{
		Writer:    stdout,
		ErrWriter: stderr,
		Name:      "diskimg",
		Usage:     "inspect, convert and check virtual disk images",
		Version:   version(),
		Commands: []*cli.Command{
			infoCommand(),
			mapCommand(),
			inspectCommand(),
			convertCommand(),
			compareCommand(),
			measureCommand(),
			planCommand(),
			checkCommand(),
			benchCommand(),
		},
		// Without a command: the usage and exit 1, as qemu-img.
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unknown command %q (diskimg help lists them)", c.Args().First())
			}
			cli.HelpPrinter(c.App.ErrWriter, cli.AppHelpTemplate, c.App)
			return &exitError{code: 1}
		},
		// A bad option is one line on stderr, not the help on stdout.
		OnUsageError: func(_ *cli.Context, err error, _ bool) error { return err },
		// Errors are printed once, by main, with the exit code they carry.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	for _, cmd := range app.Commands {
		name := cmd.Name
		cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error { return fmt.Errorf("%s: %w", name, err) }
	}
	args, err := permute(app.Commands, args)
	if err == nil {
		err = app.Run(args)
	}
	if err == nil {
		return 0
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if ee == nil || ee.err != nil {
		fmt.Fprintf(stderr, "diskimg: %v\n", err)
	}
	return code
}
