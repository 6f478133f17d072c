import TapDisk
print("tapdiskd")
