//! linux-vserver-x86
