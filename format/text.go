package format

import (
	"encoding/binary"
	"unicode/utf16"
)

// UTF16Z decodes the UTF-16 string in b, in the byte order given, up to
// its first NUL: the names in VHD parent locators, GPT entries and
// Windows filesystems and hives.
func UTF16Z(b []byte, order binary.ByteOrder) string {
	u := make([]uint16, 0, len(b)/2)
	for i := 0; i+1 < len(b); i += 2 {
		c := order.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}
