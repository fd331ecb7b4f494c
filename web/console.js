// console page
