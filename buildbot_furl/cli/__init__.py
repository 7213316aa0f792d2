"""Command-line front ends (click).  They parse, then call the layers below;
nothing outside this package imports it."""
