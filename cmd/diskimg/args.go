package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// permute reorders a command line as GNU getopt does for qemu-img, so
// options may follow the file names (`convert -O qcow2 a.vmdk b.qcow2
// --force`): the command's options first, then "--" and the operands in
// their order. "--" ends the options; "-" is an operand (standard input
// or output). Short options may be grouped or carry their value
// (`-pc`, `-Oqcow2`). An option the command does not define is an error
// naming it. Arguments before a command name (--version, help) are left
// as they are.
func permute(cmds []*cli.Command, args []string) ([]string, error) {
	if len(args) < 2 {
		return args, nil
	}
	cmd := findCommand(cmds, args[1])
	if cmd == nil {
		return args, nil
	}
	spec := optionSpec(cmd)
	var opts, operands []string
	rest := args[2:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		switch {
		case a == "--":
			operands = append(operands, rest[i+1:]...)
			i = len(rest)
			continue
		case len(a) < 2 || a[0] != '-':
			operands = append(operands, a)
			continue
		}
		name, _, inline := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
		takesValue, known := spec[name]
		if !known && a[1] != '-' {
			// Grouped short options, or a short option with its value.
			grouped, usedNext, err := splitShort(cmd.Name, a, spec, rest[i+1:])
			if err != nil {
				return nil, err
			}
			opts = append(opts, grouped...)
			if usedNext {
				i++
			}
			continue
		}
		if !known {
			return nil, unknownOption(cmd.Name, a)
		}
		opts = append(opts, a)
		if takesValue && !inline {
			if i+1 == len(rest) {
				return nil, fmt.Errorf("%s: option %s needs a value", cmd.Name, a)
			}
			i++
			opts = append(opts, rest[i])
		}
	}
	out := append([]string{args[0], args[1]}, opts...)
	out = append(out, "--")
	return append(out, operands...), nil
}

// splitShort expands "-pc" into "-p", "-c" and "-Oqcow2" into "-O",
// "qcow2"; a value option at the end of the group takes the next
// argument (usedNext).
func splitShort(cmd, a string, spec map[string]bool, next []string) (out []string, usedNext bool, err error) {
	for j := 1; j < len(a); j++ {
		name := a[j : j+1]
		takesValue, ok := spec[name]
		if !ok {
			return nil, false, unknownOption(cmd, a)
		}
		out = append(out, "-"+name)
		if !takesValue {
			continue
		}
		if j+1 < len(a) {
			return append(out, a[j+1:]), false, nil
		}
		if len(next) == 0 {
			return nil, false, fmt.Errorf("%s: option -%s needs a value", cmd, name)
		}
		return append(out, next[0]), true, nil
	}
	return out, false, nil
}

func unknownOption(cmd, a string) error {
	return fmt.Errorf("%s: unknown option %s (diskimg help %s lists the options)", cmd, a, cmd)
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		for _, n := range c.Names() {
			if n == name {
				return c
			}
		}
	}
	return nil
}

// optionSpec maps each option name of cmd to whether it takes a value.
func optionSpec(cmd *cli.Command) map[string]bool {
	spec := map[string]bool{"help": false, "h": false}
	for _, f := range cmd.Flags {
		takesValue := true
		if v, ok := f.(interface{ TakesValue() bool }); ok {
			takesValue = v.TakesValue()
		}
		// A generic flag whose value stands alone (--sparsify, or
		// --sparsify=force) takes no separate argument.
		if g, ok := f.(*cli.GenericFlag); ok {
			if b, ok := g.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
				takesValue = false
			}
		}
		for _, n := range f.Names() {
			spec[n] = takesValue
		}
	}
	return spec
}
