# Transitional: rewrites `kernel<<<grid, block, smem, stream>>>(` into CAPMOE_EMU_LAUNCH for a
# source that does not launch through CAPMOE_LAUNCH yet. Usage: rewrite_launches.py IN OUT
import re
import sys

src = open(sys.argv[1]).read()
pat = r'([A-Za-z_][\w:]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\('
out = re.sub(pat, lambda m: 'CAPMOE_EMU_LAUNCH(%s, %s)(' % (m.group(2), m.group(1)), src, flags=re.S)
open(sys.argv[2], 'w').write(out)
