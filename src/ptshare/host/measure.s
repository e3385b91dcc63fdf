# The measured calls of ptshare's host backend (ptshare/host/measure.py holds these bytes).
#
# Each entry takes the counts, does its work, takes the counts again, with raw system calls and
# no stack use, writing nothing but the data page that follows the code -- a MAP_SHARED page,
# which fork does not write-protect -- and the scenario memory it is asked to touch.  So every
# fault between the two counts is the scenario's own.  Arguments and results live in the data page.
#
# Rebuild: as measure.s -o measure.o && objcopy -O binary -j .text measure.o measure.bin
# (the first CODE_SIZE bytes are the code; tests/test_host_measure.py checks they match).

.intel_syntax noprefix
.text
code:

.macro BEGIN
    mov eax, 98                 # getrusage(RUSAGE_SELF, &before)
    xor edi, edi
    lea rsi, [rip + before]
    syscall
    mov eax, 228                # clock_gettime(clock, &t0): CLOCK_MONOTONIC or CLOCK_THREAD_CPUTIME_ID
    mov edi, dword ptr [rip + clock]
    lea rsi, [rip + t0]
    syscall
.endm

.macro END
    mov eax, 228                # clock_gettime(clock, &t1)
    mov edi, dword ptr [rip + clock]
    lea rsi, [rip + t1]
    syscall
    mov eax, 98                 # getrusage(RUSAGE_SELF, &after)
    xor edi, edi
    lea rsi, [rip + after]
    syscall
.endm

do_syscall:                     # result = syscall(nr, args[0..5])
    BEGIN
    mov rax, [rip + nr]
    mov rdi, [rip + args]
    mov rsi, [rip + args + 8]
    mov rdx, [rip + args + 16]
    mov r10, [rip + args + 24]
    mov r8, [rip + args + 32]
    mov r9, [rip + args + 40]
    syscall
    mov [rip + result], rax
    END
    mov rax, [rip + result]
    ret

touch_strided:                  # read or write the byte at base + i * stride, i = 0 .. count-1
    BEGIN
    mov rdi, [rip + base]
    mov rcx, [rip + count]
    mov rsi, [rip + stride]
    cmp qword ptr [rip + write], 0
    jne 2f
1:  test rcx, rcx
    jz 9f
    movzx eax, byte ptr [rdi]
    add rdi, rsi
    dec rcx
    jmp 1b
2:  test rcx, rcx
    jz 9f
    mov byte ptr [rdi], 1
    add rdi, rsi
    dec rcx
    jmp 2b
9:  END
    xor eax, eax
    ret

touch_listed:                   # read or write the byte at base + offsets[i], i = 0 .. count-1
    BEGIN
    mov rdi, [rip + base]
    mov rcx, [rip + count]
    mov rdx, [rip + offsets]
    cmp qword ptr [rip + write], 0
    jne 2f
1:  test rcx, rcx
    jz 9f
    mov rax, [rdx]
    movzx eax, byte ptr [rdi + rax]
    add rdx, 8
    dec rcx
    jmp 1b
2:  test rcx, rcx
    jz 9f
    mov rax, [rdx]
    mov byte ptr [rdi + rax], 1
    add rdx, 8
    dec rcx
    jmp 2b
9:  END
    xor eax, eax
    ret

fork:                           # clone(clone_flags, 0, 0, child_tid, 0); the child returns 0 at once
    BEGIN
    mov eax, 56
    mov rdi, [rip + clone_flags]
    xor esi, esi
    xor edx, edx
    mov r10, [rip + child_tid]
    xor r8d, r8d
    syscall
    test rax, rax
    jle 9f
    mov [rip + result], rax
    END
    mov rax, [rip + result]
9:  ret

.org 4096
data:
before:      .zero 144          # struct rusage
after:       .zero 144
t0:          .zero 16           # struct timespec
t1:          .zero 16
result:      .zero 8
nr:          .zero 8
args:        .zero 48
base:        .zero 8
count:       .zero 8
stride:      .zero 8
offsets:     .zero 8
write:       .zero 8
clone_flags: .zero 8
child_tid:   .zero 8
clock:       .zero 8            # the clock t0 and t1 are read from
