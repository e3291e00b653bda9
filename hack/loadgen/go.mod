module archaudit.dev/loadgen

go 1.26
