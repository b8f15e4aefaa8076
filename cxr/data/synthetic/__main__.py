"""``python -m cxr.data.synthetic OUT.png``: write the contact sheet (see :mod:`cxr.data.synthetic.sheet`)."""

from cxr.data.synthetic.sheet import main

main()
