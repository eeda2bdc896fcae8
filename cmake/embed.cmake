# Turns IN (a text file) into OUT, a C file defining `const char schema_sql[]`.
file(READ ${IN} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE ${OUT} "/* Generated from daemon/schema.sql; do not edit. */\n#include \"schema.h\"\nconst char schema_sql[] = {\n${bytes}0x00};\n")
