"""Dataset layer (torch-free): folder layouts, the split manifest, class weights, synthetic X-rays."""
