"""How sealed records lie in blobs: the mirror format, the owner's data set file, sample areas."""
