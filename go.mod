module github.com/diskimg/diskimg

go 1.26.8
