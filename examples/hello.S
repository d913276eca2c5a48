# A static x86-64 program for `forkspec run`: mmap a page, write a greeting into it, fork;
# the child prints it and exits 7; the parent waits and exits with the child's code.
# Build: gcc -nostdlib -static -o hello examples/hello.S
        .globl _start
        .text
_start:
        mov     $9, %eax                # mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0)
        xor     %edi, %edi
        mov     $4096, %esi
        mov     $3, %edx
        mov     $0x22, %r10d
        mov     $-1, %r8
        xor     %r9d, %r9d
        syscall
        mov     %rax, %rbx              # the page
        movabs  $0x0a6b726f66206968, %rcx   # "hi fork\n"
        mov     %rcx, (%rbx)
        mov     $57, %eax               # fork()
        syscall
        test    %rax, %rax
        jnz     parent
        mov     $1, %eax                # child: write(1, page, 8); exit(7)
        mov     $1, %edi
        mov     %rbx, %rsi
        mov     $8, %edx
        syscall
        mov     $60, %eax
        mov     $7, %edi
        syscall
parent:
        mov     %rax, %rdi              # wait4(child, &status on the page + 8, 0, NULL)
        lea     8(%rbx), %rsi
        xor     %edx, %edx
        xor     %r10d, %r10d
        mov     $61, %eax
        syscall
        movzbl  9(%rbx), %edi           # exit((status >> 8) & 0xff)
        mov     $60, %eax
        syscall
