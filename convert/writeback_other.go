//go:build !linux

package convert

const writebackSupported = false

func startWriteback(uintptr) {}
