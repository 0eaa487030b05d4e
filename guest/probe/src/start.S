/*
 * Entry of the probe guest. The VMM enters here in 64-bit mode with
 * identity paging, interrupts off and the Linux zero page's address in %rsi
 * (the 64-bit boot protocol). Switch to our own stack and call probe_main.
 */
	.section .text.start, "ax"
	.globl _start
	.code64
_start:
	cli
	lea	stack_top(%rip), %rsp
	mov	%rsi, %rdi
	call	probe_main
1:	hlt
	jmp	1b

	.section .bss
	.balign 16
	.space 65536
stack_top:

	.section .note.GNU-stack, "", @progbits
